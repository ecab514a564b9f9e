"""The ffmpeg backend: decode planned segments in ffmpeg processes, frames piped as raw RGB.

Each segment (pipeline/video/segments.py) is one ffmpeg input that starts at a keyframe (input `-ss`,
see seek_time_text), stops reading just after its last wanted frame (input `-t`), and keeps its frames
with `select` on frame numbers counted from that keyframe; the segments of a call are concatenated in
one ffmpeg process (at most 16 inputs, fewer for large pictures, and 256 frames per input, so long
lists use a few processes). Every frame of a segment is decoded, but only the selected ones are scaled
(the `scale` filter: area when shrinking, bicubic when enlarging), converted to RGB and piped; nothing
else reaches Python. The other backends reproduce this scaling (pipeline/video/pyav_decode.py).

Costs a process start per call (tens of milliseconds); needs only the ffmpeg binary (>= 5.1, for
`-fps_mode`). The watchdog in pipeline/video/process.py enforces the timeout by killing the process.
"""

from __future__ import annotations

import dataclasses
import logging

import ffmpeg
import numpy as np

from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.probe import FrameLayout
from distinit.pipeline.video.process import GLOBAL_ARGUMENTS, ffmpeg_reason, run_ffmpeg
from distinit.pipeline.video.segments import DecodePlan, Segment, keyframe_seek_microseconds

logger = logging.getLogger(__name__)

# Every input holds its own decoder (threads, reference frames): ~200 MB for 16 inputs at 1280x720.
MAX_INPUTS_PER_PROCESS = 16
MAX_INPUT_MEGAPIXELS_PER_PROCESS = 16.0


def scale_flags(source_size: tuple[int, int], size: tuple[int, int]) -> str:
    """The `scale` filter's algorithm every backend uses: area averaging to shrink, bicubic to enlarge."""
    return "area" if size[0] * size[1] < source_size[0] * source_size[1] else "bicubic"


def seek_time_text(layout: FrameLayout, keyframe_index: int) -> str:
    """The `-ss` value that makes ffmpeg's first decoded frame exactly keyframe `keyframe_index` (> 0);
    see segments.keyframe_seek_microseconds."""
    microseconds = keyframe_seek_microseconds(layout, keyframe_index)
    return f"{microseconds // 1_000_000}.{microseconds % 1_000_000:06d}"


def _select_expression(relative_indices) -> str:
    # ffmpeg's expression parser rejects ~100 terms chained flat; a balanced tree of sums nests log2(n) deep.
    terms = [f"eq(n,{index})" for index in relative_indices]
    while len(terms) > 1:
        terms = [f"({terms[i]}+{terms[i + 1]})" if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


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
    source_size = (layout.info.width, layout.info.height)
    if size != source_size:
        stream = stream.filter("scale", size[0], size[1], flags=scale_flags(source_size, size))
    return stream


def _decode_process(plan: DecodePlan) -> np.ndarray:
    """One ffmpeg process for the plan's segments; returns (N, H, W, 3), padding a short read with its last frame."""
    path, size, threads, deadline = plan.path, plan.size, plan.threads, plan.deadline
    wanted = plan.frame_count
    streams = [_segment_stream(path, plan.layout, segment, size, threads) for segment in plan.segments]
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


def decode_segments(plan: DecodePlan) -> np.ndarray:
    """The frames of the plan's segments, in order: (N, H, W, 3) uint8, N the number of indices they hold."""
    megapixels = plan.layout.info.width * plan.layout.info.height / 1e6
    per_process = max(1, min(MAX_INPUTS_PER_PROCESS, int(MAX_INPUT_MEGAPIXELS_PER_PROCESS / megapixels)))
    parts = [
        _decode_process(dataclasses.replace(plan, segments=plan.segments[start:start + per_process]))
        for start in range(0, len(plan.segments), per_process)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
