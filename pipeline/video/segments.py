"""Where each decoder starts: the wanted frames of a call split into segments that begin at a keyframe.

Every backend (pipeline/video/backends.py) decodes the same plan, so they agree on which frames they
return. A segment starts at a keyframe and decodes on to its last wanted frame. Reaching frame b when
the previous wanted frame was a costs
  - decoding on:        b - a frames;
  - a new segment:      b - keyframe_before(b) frames + about 20 frames' worth for one more seek
                        (measured with ffmpeg: refilling the decoder's frame threads, the keyframe,
                        open + seek).
A new segment is started where that is cheaper. In practice: sampling 2 frames/s from 25-30 fps video
with GOPs of 12 frames or more is one pass from the first sampled frame's keyframe (bench/decode.py,
2 cores: seeking per sample was 1.5-6x slower there); sparser sampling or shorter GOPs make it seek
(0.25 frames/s over 60 s of 640x360 with 2 s GOPs: 0.23 s against 0.79 s for one pass and 0.89 s for
piping every frame). strategy='sequential' or 'seek' forces one side, for benchmarks and tests.

Exactness: segments start at keyframes only, and only where the layout says a seek lands exactly
(FrameLayout.seekable: not in MPEG-TS/PS, nor in AVI files without presentation timestamps); there
the only start is frame 0. Starting at the keyframe before the target, not at the target, also keeps
open-GOP streams exact: frames shown just before an open-GOP keyframe are decoded after it and need the
keyframe before.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np

from distinit.pipeline.video.probe import FrameLayout

MAX_SELECTED_PER_INPUT = 256  # keeps ffmpeg's select expression well inside its and the OS's limits
# Measured on 2 cores (H.264, 640x360 and 1280x720): one more seeked input in a process costs about as
# much as decoding 22 more frames (refilling the decoder's frame-thread pipeline, decoding the keyframe,
# its RGB conversion), plus a few milliseconds that do not scale with the picture (open, seek).
SEEK_OVERHEAD_FRAMES = 20.0
SEEK_OVERHEAD_SECONDS = 0.003
DECODE_SECONDS_PER_MEGAPIXEL = 0.0016  # measured: ~700 frames/s at 1280x720, ~2300 at 640x360
STRATEGIES = ("auto", "sequential", "seek")


class Deadline:
    """One timeout shared by the probe and every decoding step of a call."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return self.end - time.monotonic()


@dataclasses.dataclass(frozen=True)
class Segment:
    """One decoding run: started at keyframe first_index (0 = from the start), keeping `indices` (ascending)."""

    first_index: int
    indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """What a backend decodes: `segments` of the file at `path`, converted to RGB at `size` (width, height)."""

    path: str
    layout: FrameLayout
    segments: tuple[Segment, ...]
    size: tuple[int, int]
    threads: int | None  # decoder threads; None: the library's default
    deadline: Deadline

    @property
    def frame_count(self) -> int:
        """How many frames the plan returns: one per wanted index."""
        return sum(len(segment.indices) for segment in self.segments)


def plan_segments(indices: Sequence[int], keyframe_indices: np.ndarray, seek_overhead_frames: float) -> list[Segment]:
    """Split ascending unique frame indices into segments by the cost rule in the module docstring.

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
        # Start at the keyframe itself, not at the target: decoding starts at a keyframe anyway, and a
        # target just before an open-GOP keyframe is only decodable from the keyframe before it.
        first_index, current = keyframe, [index]
    if current:
        segments.append(Segment(first_index, tuple(current)))
    return segments


def seek_overhead_frames(strategy: str, width: int, height: int) -> float:
    """The cost of one more segment in frames of decoding, for `strategy` (see STRATEGIES)."""
    if strategy == "sequential":
        return math.inf
    if strategy == "seek":
        return -math.inf
    seconds_per_frame = DECODE_SECONDS_PER_MEGAPIXEL * max(width * height, 64 * 64) / 1e6
    return SEEK_OVERHEAD_FRAMES + SEEK_OVERHEAD_SECONDS / seconds_per_frame


def plan_for_layout(layout: FrameLayout, indices: Sequence[int], overhead_frames: float) -> list[Segment]:
    """plan_segments over the places `layout` allows a decoder to start: its keyframes, or frame 0 only."""
    if not layout.seekable:
        # Only frame 0 is a safe place to start: one pass from the beginning, whatever the strategy.
        return plan_segments(indices, np.zeros(1, dtype=np.int64), math.inf)
    return plan_segments(indices, layout.keyframe_indices, overhead_frames)


def keyframe_seek_microseconds(layout: FrameLayout, keyframe_index: int) -> int:
    """The seek time (microseconds from the start of the file) that makes a decoder's first frame exactly
    keyframe `keyframe_index` (> 0).

    The keyframe's own timestamp, rounded up to the microsecond (ffmpeg's `-ss` precision). The demuxer then
    starts at this keyframe (its index time <= the seek time; a hair earlier and it would start one GOP
    earlier). ffmpeg shifts timestamps by the seek time rounded to the stream's time base and drops
    frames below zero: the keyframe lands on 0 and is kept, the frame before is negative. That needs
    the seek time within half a tick of the keyframe, true for any time base coarser than 2 us.
    """
    return math.ceil(layout.frame_times[keyframe_index] * 1e6 - 1e-6)
