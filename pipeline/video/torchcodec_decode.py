"""The TorchCodec backend: frames by index from TorchCodec's decoder, on the CPU or on a CUDA device (NVDEC), for
layouts where a seek is exact.

TorchCodec is optional for users (the `torchcodec` extra; requirements.txt pins it so CI tests it): it needs
FFmpeg's shared libraries (4 to 9; TorchCodec bundles none), e.g. Debian's `libavcodec59 libavformat59 libavutil57
libswscale6 libavfilter8 libswresample4 libavdevice59`.

Seeking from the stored layout. TorchCodec's "exact" seek mode scans every packet of the file when a decoder
opens (in process, no decoding) to number the frames by presentation time and find the keyframes, which is what
the stored layout (pipeline/video/probe.py: every frame's time in ticks, the keyframes) already holds. So the
decoder is given them as its custom frame mappings and opens without a scan (measured on one core: opening cost
12.5 -> 4.6 ms on a 60 s 1500-frame file, the scan growing with the file). TorchCodec's public option takes them
as JSON, which it parses in Python at about the scan's cost (5.8 ms for 1500 frames), so they are handed over as
tensors through the function its VideoDecoder calls (torchcodec._core, private: checked at first use, and a
TorchCodec without it scans as before, with a warning). The layout's times count from the file's start as
ffmpeg's `-ss` does; TorchCodec's are the stream's own timestamps, so the layout's first frame is placed at the
stream's start time from the header. Every decoded frame's timestamp is checked against the layout: a mismatch
is a VideoError, and backends.py hands the clip to PyAV (as it does a file TorchCodec fails on).

The decoder then seeks to the keyframe before each wanted frame and decodes on, as in exact mode, so the frames
are the same. Its own seeks are wrong in MPEG-TS and in AVI files without presentation timestamps (checked:
frames off by one or many), so backends.py hands layouts that are not seekable to PyAV or ffmpeg instead.

Pixels: at the stored size they equal the ffmpeg backend's bit for bit (the same swscale conversion to RGB). A
resize is TorchCodec's Resize transform: bilinear with antialiasing, on RGB after the conversion, where the ffmpeg
backend uses area averaging (bicubic to enlarge) on YUV; the two differ by a few levels on real footage
(tests/test_decoders.py bounds it). decoder="auto" therefore picks TorchCodec only where no resize is needed.

With decode_device="cuda" frames come back as a torch uint8 tensor on that device, (N, H, W, 3).
"""

from __future__ import annotations

import functools
import inspect
import logging

import numpy as np

from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.probe import FrameLayout
from distinit.pipeline.video.segments import DecodePlan
from distinit.pipeline.video.slow_path import warn_slow_fallback

logger = logging.getLogger(__name__)

SCAN_ADVICE = "each clip then costs TorchCodec a scan of the whole file; decoder=auto (PyAV) needs none"


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when TorchCodec imports and its FFmpeg libraries load, else why not (one line)."""
    try:
        import torchcodec.decoders  # noqa: F401
        from torchcodec._core import get_ffmpeg_library_versions

        get_ffmpeg_library_versions()  # loads the core library, which needs FFmpeg's shared libraries
    except ImportError as error:
        return f"torchcodec is not installed ({error})"
    except Exception as error:  # TorchCodec raises RuntimeError/OSError with a multi-line report
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"torchcodec cannot load FFmpeg's shared libraries ({first_line})"
    return None


@functools.lru_cache(maxsize=1)
def layout_seeking_problem() -> str | None:
    """None when this TorchCodec takes frame mappings as tensors (the functions its VideoDecoder calls, as in
    0.17), else why not: decoding then scans each file."""
    try:
        from torchcodec._core import get_frames_at_indices  # noqa: F401
        from torchcodec._core._decoder_utils import create_video_decoder
        from torchcodec.decoders._decoder_utils import _get_cuda_backend  # noqa: F401
    except ImportError as error:
        return f"this TorchCodec has no tensor frame mappings ({error})"
    wanted = {"source", "seek_mode", "dimension_order", "num_ffmpeg_threads", "device", "device_variant",
              "transforms", "custom_frame_mappings", "output_dtype"}
    missing = wanted - set(inspect.signature(create_video_decoder).parameters)
    if missing:
        return f"this TorchCodec's create_video_decoder takes no {', '.join(sorted(missing))}"
    return None


def decode_segments(plan: DecodePlan, decode_device: str = "cpu"):
    """The frames of the plan's segments, in order: (N, H, W, 3) uint8, a numpy array (CPU) or a torch tensor on
    `decode_device`. Seeks from the stored layout (a TorchCodec without tensor frame mappings scans the file
    instead, and indices past the frames it finds repeat the last frame decoded, as the other backends pad a
    short read)."""
    from torchcodec.transforms import Resize

    path, size, info = plan.path, plan.size, plan.layout.info
    indices = [index for segment in plan.segments for index in segment.indices]
    options = {
        "dimension_order": "NHWC",
        "num_ffmpeg_threads": 0 if plan.threads is None else plan.threads,
        "transforms": None if size == (info.width, info.height) else [Resize((size[1], size[0]))],
    }
    _check_deadline(plan)  # a call into TorchCodec cannot be interrupted: check around it
    problem = layout_seeking_problem()
    try:
        if problem is None:
            frames = _frames_from_layout(path, plan.layout, indices, decode_device, options)
        else:
            warn_slow_fallback("torchcodec scan", path, f"TorchCodec scans the file ({problem})", SCAN_ADVICE)
            frames = _frames_after_scan(path, indices, decode_device, options)
    except (RuntimeError, ValueError, OSError, IndexError) as error:
        raise VideoError(path, _one_line(error)) from None
    _check_deadline(plan)
    return frames.numpy() if frames.device.type == "cpu" else frames


def _frames_from_layout(path: str, layout: FrameLayout, indices: list[int], decode_device: str, options: dict):
    """The frames at `indices`, the decoder given the layout's frame times and keyframes instead of a scan; a
    VideoError where a decoded frame's timestamp is not the layout's."""
    import torch
    from torchcodec._core import get_frames_at_indices

    ticks = np.rint(layout.frame_times / layout.tick_seconds).astype(np.int64)
    decoder, stream_start = _open_with_mappings(path, layout, ticks, decode_device, options)
    offset = 0 if stream_start is None else round(stream_start / layout.tick_seconds) - int(ticks[0])
    if offset:  # rare: timestamps that do not start at 0 (ffmpeg's -output_ts_offset, a cut on its source's clock)
        decoder, _ = _open_with_mappings(path, layout, ticks + offset, decode_device, options)
    frames, timestamps, _ = get_frames_at_indices(decoder, frame_indices=torch.tensor(indices, dtype=torch.int64))
    decoded = np.rint(timestamps.cpu().numpy() / layout.tick_seconds).astype(np.int64)
    expected = ticks[indices] + offset
    if not np.array_equal(decoded, expected):
        row = int(np.flatnonzero(decoded != expected)[0])
        raise VideoError(path, f"TorchCodec decoded frame {indices[row]} at tick {decoded[row]}, where the stored "
                               f"layout has it at {expected[row]}")
    return frames


def _open_with_mappings(path: str, layout: FrameLayout, ticks: np.ndarray, decode_device: str, options: dict):
    """A TorchCodec decoder whose frame index is `ticks` (the stream's timestamps) and the layout's keyframes,
    and the stream's start in seconds from the header (None where the header has none)."""
    import torch
    from torchcodec._core._decoder_utils import create_video_decoder
    from torchcodec.decoders._decoder_utils import _get_cuda_backend

    keyframes = np.zeros(len(ticks), dtype=bool)
    keyframes[layout.keyframe_indices] = True
    last_step = int(ticks[-1] - ticks[-2]) if len(ticks) > 1 else 1
    durations = np.diff(ticks, append=ticks[-1] + last_step)
    mappings = (torch.from_numpy(ticks), torch.from_numpy(keyframes), torch.from_numpy(durations))
    decoder, _, metadata = create_video_decoder(
        source=path, seek_mode="custom_frame_mappings", device=str(decode_device), device_variant=_get_cuda_backend(),
        custom_frame_mappings=mappings, output_dtype="uint8", **options,
    )
    return decoder, metadata.begin_stream_seconds_from_header


def _frames_after_scan(path: str, indices: list[int], decode_device: str, options: dict):
    """The frames at `indices` from TorchCodec's exact mode (a scan of the file), the last one repeated for
    indices past the frames it finds."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, seek_mode="exact", device=decode_device, **options)
    frame_count = decoder.metadata.num_frames or 0
    present = [index for index in indices if index < frame_count]  # ascending: what is missing is the tail
    if not present:
        raise VideoError(path, f"decoded no frames (TorchCodec finds {frame_count}; the first one wanted is "
                               f"{indices[0]})")
    frames = decoder.get_frames_at(present).data
    if len(present) < len(indices):
        logger.debug("%s: decoded %d of %d frames; repeating the last one", path, len(present), len(indices))
        frames = frames[[min(row, len(present) - 1) for row in range(len(indices))]]
    return frames


def _check_deadline(plan: DecodePlan) -> None:
    if plan.deadline.remaining() <= 0:
        raise VideoError(plan.path, f"timed out after {plan.deadline.timeout:g}s")


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
