"""Decode only the frames a caller asks for, as uint8 RGB arrays: read_frames (any times) and read_clip
(a strided run), through one of several backends that return the same frames.

Which frame: the one displayed at time t, i.e. index floor(t * fps + 1e-6) for constant-frame-rate
video, clamped to the last frame (variable-rate video: the same formula with the average rate).
Times are seconds from the start of the file.

Which frames reach the caller is decided here, once for every backend: the file's FrameLayout (probed,
or given by the caller from a stored record, pipeline/video/layout_record.py) turns times into frame
indices, and pipeline/video/segments.py plans where decoding starts (a keyframe, and only where seeks
are exact). A backend (pipeline/video/backends.py: torchcodec, pyav, ffmpeg; `decoder="auto"` picks)
decodes that plan and scales with ffmpeg's `scale` filter (area to shrink, bicubic to enlarge), so the
frames are the same whichever runs. tests/test_video.py and tests/test_decoders.py check every backend
against a full decode (FFV1, H.264 with B-frames and open GOPs in MP4, MPEG-4 in AVI with B-frames,
MPEG-2 in MPEG-TS). A layout whose seeks are not exact is decoded from frame 0 by every call, up to a whole
file per clip: the first such call in a process warns (pipeline/video/slow_path.py).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np

from distinit.pipeline.video.backends import check_decoder, decode_segments, resolve_decoder
from distinit.pipeline.video.probe import FrameLayout, probe_layout
from distinit.pipeline.video.process import check_video_path
from distinit.pipeline.video.segments import (  # noqa: F401  (Segment, plan_segments: re-exported for callers and tests)
    STRATEGIES,
    Deadline,
    DecodePlan,
    Segment,
    plan_for_layout,
    plan_segments,
    seek_overhead_frames,
)
from distinit.pipeline.video.slow_path import warn_slow_fallback

logger = logging.getLogger(__name__)

DEFAULT_DECODE_TIMEOUT = 120.0
SEEKABLE_COPIES_ADVICE = "`distinit prepare` makes seekable copies with short GOPs (stage two reads them: --prepared)"


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) of decoded frames: the short side becomes short_side, the long side keeps the
    aspect ratio rounded to an even number. short_side=None keeps the stored size. Upscales too."""
    if short_side is None:
        return width, height
    if short_side < 1:
        raise ValueError(f"short_side must be positive, got {short_side}")
    long_side = 2 * max(1, round(max(width, height) * short_side / min(width, height) / 2))
    return (long_side, short_side) if width >= height else (short_side, long_side)


def frame_index_at(seconds: float, fps: float, frame_count: int) -> int:
    """Index of the frame displayed at `seconds`: floor(seconds * fps + 1e-6), clamped to the video."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"frame time must be a finite number of seconds >= 0, got {seconds}")
    return min(int(math.floor(seconds * fps + 1e-6)), frame_count - 1)


def _layout_for(path: str, layout: FrameLayout | None, timeout: float) -> FrameLayout:
    if layout is None:
        return probe_layout(path, timeout)
    check_video_path(path)  # what probe would have said first: missing, empty, a folder, a FIFO
    return layout


def _plan(path: str, layout: FrameLayout, indices: Sequence[int], overhead_frames: float) -> tuple[Segment, ...]:
    """The segments of `indices` (ascending); warns (once per process) when the layout makes decoding start at
    frame 0 although a keyframe before the first wanted frame would have done."""
    if indices and not layout.seekable:
        keyframes = layout.keyframe_indices
        before_first = keyframes[: np.searchsorted(keyframes, indices[0], side="right")]
        if before_first.size and before_first[-1] > 0:
            warn_slow_fallback("not seekable", path, f"seeks are not exact in this file; decoding {indices[0]} frames "
                               "before the first one wanted", SEEKABLE_COPIES_ADVICE)
    return tuple(plan_for_layout(layout, indices, overhead_frames))


def _take_rows(frames, rows: list[int]):
    """frames[rows] for a numpy array or a torch tensor (repeats and reorders; no copy when rows is 0..N-1)."""
    return frames if rows == list(range(len(frames))) else frames[rows]


def _no_frames(size: tuple[int, int], decode_device: str):
    if decode_device == "cpu":
        return np.zeros((0, size[1], size[0], 3), dtype=np.uint8)
    import torch

    return torch.zeros((0, size[1], size[0], 3), dtype=torch.uint8, device=decode_device)


def read_frames(
    path,
    times: Sequence[float],
    short_side: int | None = None,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    threads: int | None = None,
    strategy: str = "auto",
    *,
    decoder: str = "auto",
    layout: FrameLayout | None = None,
    decode_device: str = "cpu",
):
    """Frames displayed at `times` (seconds, any order, repeats allowed): (len(times), H, W, 3) uint8 RGB.

    Only the requested frames are converted (see pipeline/video/segments.py for where decoding starts).
    short_side resizes as ffmpeg's scale filter does (see output_size). threads sets the decoder's threads
    (None: the library's default, about one per core; 1 suits several parallel workers). strategy: 'auto'
    (the cost rule), 'sequential' (one pass) or 'seek' (one segment per frame), the last two for benchmarks
    and tests. decoder: 'auto', 'torchcodec', 'pyav' or 'ffmpeg' (pipeline/video/backends.py). layout: this
    file's FrameLayout (e.g. layout_from_record), used instead of probing. decode_device 'cuda' (TorchCodec
    only) returns a torch tensor on the device. `timeout` covers the whole call. Raises VideoError for
    unreadable videos, ValueError for negative or NaN times, DistinitError for a decoder that cannot run.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    check_decoder(decoder, decode_device)
    path = os.fspath(path)
    deadline = Deadline(timeout)
    layout = _layout_for(path, layout, timeout)
    info = layout.info
    wanted = [frame_index_at(float(seconds), info.fps, info.frame_count) for seconds in times]
    size = output_size(info.width, info.height, short_side)
    backend = resolve_decoder(decoder, decode_device, resizing=size != (info.width, info.height))
    if not wanted:
        return _no_frames(size, decode_device)
    unique = sorted(set(wanted))
    segments = _plan(path, layout, unique, seek_overhead_frames(strategy, info.width, info.height))
    logger.debug("%s: %d frames in %d segments (%s)", path, len(unique), len(segments), backend)
    plan = DecodePlan(path, layout, segments, size, threads, deadline)
    frames = decode_segments(backend, plan, decode_device)
    position = {index: row for row, index in enumerate(unique)}
    return _take_rows(frames, [position[index] for index in wanted])


def read_clip(
    path,
    start: float,
    num_frames: int,
    stride: int = 1,
    short_side: int | None = None,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    threads: int | None = None,
    *,
    decoder: str = "auto",
    layout: FrameLayout | None = None,
    decode_device: str = "cpu",
):
    """`num_frames` frames from the one displayed at `start`, every `stride`-th: (T, H, W, 3) uint8 RGB.

    One decoding run from the keyframe at or before the first frame (from frame 0 where the layout's
    seeks are not exact). threads, decoder, layout and decode_device as in read_frames. When the video
    ends before the clip does, the last frame is repeated to make up num_frames (logged at debug level),
    so the shape is always (num_frames, H, W, 3).
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    check_decoder(decoder, decode_device)
    path = os.fspath(path)
    deadline = Deadline(timeout)
    layout = _layout_for(path, layout, timeout)
    info = layout.info
    first = frame_index_at(float(start), info.fps, info.frame_count)
    indices = [index for index in range(first, first + num_frames * stride, stride) if index < info.frame_count]
    size = output_size(info.width, info.height, short_side)
    backend = resolve_decoder(decoder, decode_device, resizing=size != (info.width, info.height))
    plan = DecodePlan(path, layout, _plan(path, layout, indices, math.inf), size, threads, deadline)
    frames = decode_segments(backend, plan, decode_device)
    if len(indices) < num_frames:
        logger.debug("%s: clip at %.3fs runs past the last frame; repeating it %d times", path, start,
                     num_frames - len(indices))
    return _take_rows(frames, [min(row, len(indices) - 1) for row in range(num_frames)])
