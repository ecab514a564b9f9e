"""Decode only the frames a caller asks for, as uint8 RGB arrays, with ffmpeg over a pipe.

Which frame: the one displayed at time t, i.e. index floor(t * fps + 1e-6) for constant-frame-rate
video, clamped to the last frame (variable-rate video: the same formula with the average rate).
Times are seconds from the start of the file.

How (one rule for read_frames and read_clip): the wanted frame indices, sorted, are split into
*segments*. Each segment is one ffmpeg input that starts at a keyframe (input `-ss`, see
seek_time_text), stops reading just after its last wanted frame (input `-t`), and keeps its frames
with `select` on frame numbers counted from that keyframe; the segments of a call are concatenated
in one ffmpeg process (at most 16 inputs, fewer for large pictures, and 256 frames per input, so
long lists use a few processes). Every frame of a segment is decoded, but only the selected ones are
scaled (the `scale` filter, inside ffmpeg), converted to RGB and piped; nothing else reaches Python.

When to start a new segment rather than decode on: ffmpeg can only start decoding at a keyframe, so
reaching frame b when the previous wanted frame was a costs
  - decoding on:        b - a frames;
  - a new segment:      b - keyframe_before(b) frames + about 20 frames' worth for one more input
                        (measured: refilling the decoder's frame threads, the keyframe, open + seek).
A new segment is started where that is cheaper (`probe` lists every keyframe). In practice: sampling
2 frames/s from 25-30 fps video with GOPs of 12 frames or more is one pass from the first sampled
frame's keyframe (bench/decode.py, 2 cores: seeking per sample was 1.5-6x slower there); sparser
sampling or shorter GOPs make it seek (0.25 frames/s over 60 s of 640x360 with 2 s GOPs: 0.23 s
against 0.79 s for one pass and 0.89 s for piping every frame). strategy='sequential' or 'seek' forces
one side, for benchmarks and tests.

Exactness: seeks land on keyframes only, and never inside an MPEG-TS/PS or other container whose
seeks ffmpeg does not make exact, nor in AVI files without presentation timestamps (probe's
`seekable`); there decoding starts at frame 0. Starting at the keyframe before the target, not at the
target, also keeps open-GOP streams exact: frames shown just before an open-GOP keyframe are decoded
after it and need the keyframe before. tests/test_video.py checks every path against a full decode
(FFV1, H.264 with B-frames and open GOPs in MP4, MPEG-4 in AVI with B-frames, MPEG-2 in MPEG-TS).

Needs ffmpeg >= 5.1 (`-fps_mode`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Sequence

import ffmpeg
import numpy as np

from pipeline.errors import VideoError
from pipeline.video.binary import ffmpeg_binary
from pipeline.video.probe import FrameLayout, probe_layout
from pipeline.video.process import GLOBAL_ARGUMENTS, ffmpeg_reason, run_ffmpeg

logger = logging.getLogger(__name__)

DEFAULT_DECODE_TIMEOUT = 120.0
MAX_SELECTED_PER_INPUT = 256  # keeps the select expression well inside ffmpeg's and the OS's limits
# Every input holds its own decoder (threads, reference frames): ~200 MB for 16 inputs at 1280x720.
MAX_INPUTS_PER_PROCESS = 16
MAX_INPUT_MEGAPIXELS_PER_PROCESS = 16.0
# Measured on 2 cores (H.264, 640x360 and 1280x720): one more seeked input in a process costs about as
# much as decoding 22 more frames (refilling the decoder's frame-thread pipeline, decoding the keyframe,
# its RGB conversion), plus a few milliseconds that do not scale with the picture (open, seek).
SEEK_OVERHEAD_FRAMES = 20.0
SEEK_OVERHEAD_SECONDS = 0.003
DECODE_SECONDS_PER_MEGAPIXEL = 0.0016  # measured: ~700 frames/s at 1280x720, ~2300 at 640x360
STRATEGIES = ("auto", "sequential", "seek")


class Deadline:
    """One timeout shared by the probe and every ffmpeg process of a call."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return self.end - time.monotonic()


@dataclasses.dataclass(frozen=True)
class Segment:
    """One ffmpeg input: seeked to land on keyframe first_index (0 = no seek), keeping `indices` (ascending)."""

    first_index: int
    indices: tuple[int, ...]


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


def plan_segments(indices: Sequence[int], keyframe_indices: np.ndarray, seek_overhead_frames: float) -> list[Segment]:
    """Split ascending unique frame indices into inputs by the cost rule in the module docstring.

    seek_overhead_frames=inf never seeks after the first frame; -inf seeks for every frame.
    """
    segments: list[Segment] = []
    current: list[int] = []
    first_index = 0
    for index in indices:
        position = np.searchsorted(keyframe_indices, index, side="right") - 1
        keyframe = int(keyframe_indices[position]) if position >= 0 else 0
        decode_on_cost = index - current[-1] if current else 0
        new_input_cost = index - keyframe + seek_overhead_frames
        if current and len(current) < MAX_SELECTED_PER_INPUT and new_input_cost >= decode_on_cost:
            current.append(index)
            continue
        if current:
            segments.append(Segment(first_index, tuple(current)))
        # Start at the keyframe itself, not at the target: ffmpeg decodes from a keyframe anyway, and a
        # target just before an open-GOP keyframe is only decodable from the keyframe before it.
        first_index, current = keyframe, [index]
    if current:
        segments.append(Segment(first_index, tuple(current)))
    return segments


def _select_expression(relative_indices: Sequence[int]) -> str:
    # ffmpeg's expression parser rejects ~100 terms chained flat; a balanced tree of sums nests log2(n) deep.
    terms = [f"eq(n,{index})" for index in relative_indices]
    while len(terms) > 1:
        terms = [f"({terms[i]}+{terms[i + 1]})" if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def seek_time_text(layout: FrameLayout, keyframe_index: int) -> str:
    """The `-ss` value that makes ffmpeg's first decoded frame exactly keyframe `keyframe_index` (> 0).

    The keyframe's own timestamp, rounded up to the microsecond (-ss's precision). The demuxer then
    starts at this keyframe (its index time <= the seek time; a hair earlier and it would start one
    GOP earlier). ffmpeg shifts timestamps by the seek time rounded to the stream's time base and drops
    frames below zero: the keyframe lands on 0 and is kept, the frame before is negative. That needs
    the seek time within half a tick of the keyframe, true for any time base coarser than 2 us.
    """
    microseconds = math.ceil(layout.frame_times[keyframe_index] * 1e6 - 1e-6)
    return f"{microseconds // 1_000_000}.{microseconds % 1_000_000:06d}"


def _segment_stream(path: str, layout: FrameLayout, segment: Segment, size: tuple[int, int], threads: int | None):
    times = layout.frame_times
    input_options: dict[str, object] = {}
    # Frame numbers in `select` count from the first frame this input delivers.
    origin, start = 0, 0.0
    if segment.first_index > 0 and times[segment.first_index] > 0:
        origin = segment.first_index
        input_options["ss"] = seek_time_text(layout, origin)
        start = float(input_options["ss"])
    stop_index = segment.indices[-1] + 2
    if stop_index < len(times):
        # Stop reading a frame past the last one needed; extra frames are harmless (select drops them).
        input_options["t"] = f"{times[stop_index] - start:.6f}"
    if threads is not None:
        input_options["threads"] = threads
    relative = [index - origin for index in segment.indices]
    stream = ffmpeg.input(path, **input_options)["V:0"].filter("select", _select_expression(relative))
    if size != (layout.info.width, layout.info.height):
        downscale = size[0] * size[1] < layout.info.width * layout.info.height
        stream = stream.filter("scale", size[0], size[1], flags="area" if downscale else "bicubic")
    return stream


def _decode_process(
    path: str,
    layout: FrameLayout,
    segments: list[Segment],
    size: tuple[int, int],
    threads: int | None,
    deadline: Deadline,
) -> np.ndarray:
    """One ffmpeg process for `segments`; returns (N, H, W, 3), padding a short read with its last frame."""
    wanted = sum(len(segment.indices) for segment in segments)
    streams = [_segment_stream(path, layout, segment, size, threads) for segment in segments]
    joined = ffmpeg.concat(*streams, v=1, a=0) if len(streams) > 1 else streams[0]
    # passthrough: no frame is duplicated or dropped to fit a frame rate on the way out.
    output = joined.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", **{"frames:v": wanted})
    global_arguments = [*GLOBAL_ARGUMENTS, "-loglevel", "error"]
    if threads is not None:
        global_arguments += ["-filter_complex_threads", str(threads)]
    command = output.compile(cmd=[ffmpeg_binary(), *global_arguments])
    frame_bytes = size[0] * size[1] * 3
    stdout, stderr_text = run_ffmpeg(
        command, path, deadline.remaining(), expected_bytes=wanted * frame_bytes, call_timeout=deadline.timeout
    )
    decoded = len(stdout) // frame_bytes
    if decoded == 0:
        reason = ffmpeg_reason(stderr_text, path) if stderr_text.strip() else "ffmpeg produced no frames"
        raise VideoError(path, f"decoded no frames ({reason})")
    frames = np.frombuffer(stdout, dtype=np.uint8, count=decoded * frame_bytes).reshape(decoded, size[1], size[0], 3)
    if decoded < wanted:
        logger.debug("%s: decoded %d of %d frames; repeating the last one", path, decoded, wanted)
        frames = np.concatenate([frames, np.repeat(frames[-1:], wanted - decoded, axis=0)])
    return frames


def decode_indices(
    path: str,
    layout: FrameLayout,
    indices: Sequence[int],
    size: tuple[int, int],
    threads: int | None,
    deadline: Deadline,
    seek_overhead_frames: float,
) -> np.ndarray:
    """Frames at ascending unique `indices`: (len(indices), H, W, 3) uint8."""
    keyframe_indices = layout.keyframe_indices
    if not layout.seekable:
        # Only frame 0 is a safe place to start: one pass from the beginning, whatever the strategy.
        keyframe_indices, seek_overhead_frames = np.zeros(1, dtype=np.int64), math.inf
    segments = plan_segments(indices, keyframe_indices, seek_overhead_frames)
    logger.debug("%s: %d frames in %d inputs", path, len(indices), len(segments))
    megapixels = layout.info.width * layout.info.height / 1e6
    per_process = max(1, min(MAX_INPUTS_PER_PROCESS, int(MAX_INPUT_MEGAPIXELS_PER_PROCESS / megapixels)))
    parts = [
        _decode_process(path, layout, segments[start:start + per_process], size, threads, deadline)
        for start in range(0, len(segments), per_process)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _seek_overhead_frames(strategy: str, width: int, height: int) -> float:
    if strategy == "sequential":
        return math.inf
    if strategy == "seek":
        return -math.inf
    seconds_per_frame = DECODE_SECONDS_PER_MEGAPIXEL * max(width * height, 64 * 64) / 1e6
    return SEEK_OVERHEAD_FRAMES + SEEK_OVERHEAD_SECONDS / seconds_per_frame


def read_frames(
    path,
    times: Sequence[float],
    short_side: int | None = None,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    threads: int | None = None,
    strategy: str = "auto",
) -> np.ndarray:
    """Frames displayed at `times` (seconds, any order, repeats allowed): (len(times), H, W, 3) uint8 RGB.

    Only the requested frames leave ffmpeg (see the module docstring for how inputs are planned).
    short_side resizes inside ffmpeg (see output_size). threads sets ffmpeg's decoder threads (None:
    ffmpeg's default, about one per core; 1 suits several parallel workers). strategy: 'auto' (the
    cost rule), 'sequential' (one pass) or 'seek' (one input per frame), the last two for benchmarks
    and tests. `timeout` covers the whole call. Raises VideoError for unreadable videos, ValueError
    for negative or NaN times.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    path = os.fspath(path)
    deadline = Deadline(timeout)
    layout = probe_layout(path, timeout)
    info = layout.info
    wanted = [frame_index_at(float(seconds), info.fps, info.frame_count) for seconds in times]
    width, height = output_size(info.width, info.height, short_side)
    if not wanted:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    unique = sorted(set(wanted))
    overhead = _seek_overhead_frames(strategy, info.width, info.height)
    frames = decode_indices(path, layout, unique, (width, height), threads, deadline, overhead)
    if wanted == unique:
        return frames
    position = {index: row for row, index in enumerate(unique)}
    return frames[[position[index] for index in wanted]]


def read_clip(
    path,
    start: float,
    num_frames: int,
    stride: int = 1,
    short_side: int | None = None,
    timeout: float = DEFAULT_DECODE_TIMEOUT,
    threads: int | None = None,
) -> np.ndarray:
    """`num_frames` frames from the one displayed at `start`, every `stride`-th: (T, H, W, 3) uint8 RGB.

    Decoded in one ffmpeg process (clips up to 256 frames): a seek to the keyframe at or before the
    first frame, then `select` on frame numbers; never a timestamp seek where probe found it inexact
    (see the module docstring). threads as in read_frames. When the video ends
    before the clip does, the last decoded frame is repeated to make up num_frames (logged at
    debug level), so the shape is always (num_frames, H, W, 3).
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    path = os.fspath(path)
    deadline = Deadline(timeout)
    layout = probe_layout(path, timeout)
    info = layout.info
    first = frame_index_at(float(start), info.fps, info.frame_count)
    indices = [index for index in range(first, first + num_frames * stride, stride) if index < info.frame_count]
    size = output_size(info.width, info.height, short_side)
    frames = decode_indices(path, layout, indices, size, threads, deadline, math.inf)
    if len(indices) < num_frames:
        missing = num_frames - len(indices)
        logger.debug("%s: clip at %.3fs runs past the last frame; repeating it %d times", path, start, missing)
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
    return frames
