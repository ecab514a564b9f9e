"""The TorchCodec backend: frames by index from torchcodec.decoders.VideoDecoder, on the CPU or on a CUDA
device (NVDEC), for layouts where a seek is exact.

TorchCodec is optional (not pinned): `pip install torchcodec`, plus FFmpeg's shared libraries (4 to 8;
TorchCodec bundles none), e.g. Debian's `libavcodec59 libavformat59 libavutil57 libswscale6 libavfilter8
libswresample4 libavdevice59`. The decoder runs in "exact" seek mode: it scans the file's packets once
(in process, no decoding) and numbers frames by presentation time, as pipeline/video/probe.py does, then
seeks to the keyframe before each wanted frame and decodes on. Its own seeks are wrong in MPEG-TS and in
AVI files without presentation timestamps (checked: frames off by one or many), so backends.py hands
layouts that are not seekable to PyAV or ffmpeg instead.

Pixels: at the stored size they equal the ffmpeg backend's bit for bit (the same swscale conversion to
RGB). A resize is TorchCodec's Resize transform: bilinear with antialiasing, on RGB after the
conversion, where the ffmpeg backend uses area averaging (bicubic to enlarge) on YUV; the two differ by a
few levels on real footage (tests/test_decoders.py bounds it). decoder="auto" therefore picks TorchCodec
only where no resize is needed.

With decode_device="cuda" frames come back as a torch uint8 tensor on that device, (N, H, W, 3).
"""

from __future__ import annotations

import functools
import logging

from pipeline.errors import VideoError
from pipeline.video.segments import DecodePlan

logger = logging.getLogger(__name__)


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


def decode_segments(plan: DecodePlan, decode_device: str = "cpu"):
    """The frames of the plan's segments, in order: (N, H, W, 3) uint8, a numpy array (CPU) or a torch tensor on
    `decode_device`. Indices past the frames TorchCodec finds repeat the last frame decoded, as the other
    backends pad a short read."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    path, deadline, size, info = plan.path, plan.deadline, plan.size, plan.layout.info
    indices = [index for segment in plan.segments for index in segment.indices]
    transforms = None if size == (info.width, info.height) else [Resize((size[1], size[0]))]
    try:
        decoder = VideoDecoder(
            path, dimension_order="NHWC", seek_mode="exact", device=decode_device,
            num_ffmpeg_threads=0 if plan.threads is None else plan.threads, transforms=transforms,
        )
        frame_count = decoder.metadata.num_frames or 0
        present = [index for index in indices if index < frame_count]  # ascending: what is missing is the tail
        if not present:
            reason = f"decoded no frames (TorchCodec finds {frame_count}; the first one wanted is {indices[0]})"
            raise VideoError(path, reason)
        if deadline.remaining() <= 0:  # a call into TorchCodec cannot be interrupted: check around it
            raise VideoError(path, f"timed out after {deadline.timeout:g}s")
        frames = decoder.get_frames_at(present).data
    except (RuntimeError, ValueError, OSError, IndexError) as error:
        raise VideoError(path, _one_line(error)) from None
    if deadline.remaining() <= 0:
        raise VideoError(path, f"timed out after {deadline.timeout:g}s")
    if len(present) < len(indices):
        logger.debug("%s: decoded %d of %d frames; repeating the last one", path, len(present), len(indices))
        frames = frames[[min(row, len(present) - 1) for row in range(len(indices))]]
    return frames.numpy() if frames.device.type == "cpu" else frames


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
