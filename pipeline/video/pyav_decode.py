"""The PyAV backend: decode planned segments in process, with the FFmpeg libraries PyAV's wheel bundles.

One container per call. Each segment (pipeline/video/segments.py) that starts ahead of where decoding
stands seeks to its keyframe exactly as the ffmpeg backend's `-ss` does (the same microsecond, through
the same libavformat seek), drops what decodes before the keyframe's time (a seek landing one GOP early,
open-GOP frames shown before the keyframe), and counts frames from there in presentation order; a
segment that starts behind decodes on without seeking, and a layout that is not seekable is decoded
from frame 0 once. Only the wanted frames are converted, through an FFmpeg filter graph built like the
ffmpeg command line's: rotation from the display matrix (`transpose`, `hflip,vflip`), the same `scale`
filter and flags, then `format=rgb24`, so the pixels are those of the ffmpeg backend (tests/test_decoders.py).

The timeout is checked between frames and bounds each blocking read (PyAV's interrupt callback); one
frame's decoding cannot be interrupted.
"""

from __future__ import annotations

import collections
import fractions
import itertools
import logging
import os
import threading
from typing import Iterator

import av
import numpy as np

from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.decode import SEEKABLE_COPIES_ADVICE
from distinit.pipeline.video.ffmpeg_decode import scale_flags
from distinit.pipeline.video.probe import FrameLayout
from distinit.pipeline.video.segments import Deadline, DecodePlan, Segment, keyframe_seek_microseconds
from distinit.pipeline.video.slow_path import warn_slow_fallback

logger = logging.getLogger(__name__)

# The command line's autorotate filters, by the display matrix's counter-clockwise angle (PyAV's `rotation`).
_ROTATION_FILTERS = {
    90: [("transpose", "cclock")],
    -90: [("transpose", "clock")],
    180: [("hflip", None), ("vflip", None)],
}
# Filter graphs kept per process: one per kind of input a worker meets (Kinetics originals come in a few sizes).
CACHED_GRAPHS = 16


def decode_segments(plan: DecodePlan) -> np.ndarray:
    """The frames of the plan's segments, in order: (N, H, W, 3) uint8, N the number of indices they hold.

    A video that ends before a wanted frame repeats the last frame decoded (as the ffmpeg backend pads a
    short read); nothing decoded at all is a VideoError.
    """
    path, deadline = plan.path, plan.deadline
    width, height = plan.size
    frames = np.empty((plan.frame_count, height, width, 3), dtype=np.uint8)
    filled = np.zeros(plan.frame_count, dtype=bool)
    try:
        with av.open(path, metadata_errors="replace", timeout=max(deadline.remaining(), 0.001)) as container:
            stream = _video_stream(container, path)
            stream.codec_context.thread_type = "AUTO"  # frame and slice threads, as the command line
            stream.codec_context.thread_count = 0 if plan.threads is None else plan.threads
            reader = _FrameReader(container, stream, plan.layout, deadline, path)
            first_row = 0
            for segment in plan.segments:
                row_of = {index: first_row + offset for offset, index in enumerate(segment.indices)}
                for index, frame in reader.wanted_frames(segment):
                    convert_into(frame, frames[row_of[index]], plan.size, plan.threads)
                    filled[row_of[index]] = True
                first_row += len(segment.indices)
    except av.FFmpegError as error:
        if deadline.remaining() <= 0:
            raise VideoError(path, f"timed out after {deadline.timeout:g}s") from None
        raise VideoError(path, describe_error(error)) from None
    return _fill_missing(frames, filled, path)


def describe_error(error: av.FFmpegError) -> str:
    """FFmpeg's reason on one line, with the library's last log line where PyAV kept it."""
    reason = error.strerror or type(error).__name__
    log = error.log
    if log and len(log) > 2 and log[2] and log[2].strip() not in reason:
        reason = f"{log[2].strip()}; {reason}"
    return " ".join(reason.split())


def _video_stream(container, path: str):
    # The first real video stream, as ffmpeg's `V:0`: cover art (an attached picture) does not count.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(path, "no video stream")


def _fill_missing(frames: np.ndarray, filled: np.ndarray, path: str) -> np.ndarray:
    """`frames` with each row never decoded (the video ended first) copied from the decoded row before it, or from
    the first decoded row for rows before any."""
    decoded = np.flatnonzero(filled)
    if len(decoded) == 0:
        raise VideoError(path, "decoded no frames")
    if len(decoded) < len(frames):
        logger.debug("%s: decoded %d of %d frames; repeating the last one", path, len(decoded), len(frames))
        sources = np.maximum.accumulate(np.where(filled, np.arange(len(frames)), -1))
        sources[sources < 0] = decoded[0]
        missing = ~filled
        frames[missing] = frames[sources[missing]]
    return frames


class _FrameReader:
    """Frames of one stream by index in presentation order, seeking forward only where a segment asks."""

    def __init__(self, container, stream, layout: FrameLayout, deadline: Deadline, path: str):
        self.container, self.stream, self.layout = container, stream, layout
        self.deadline, self.path = deadline, path
        # Layout times count from the file's start time, as ffmpeg's -ss does (pipeline/video/probe.py).
        self.start_microseconds = container.start_time or 0
        self.half_frame_seconds = 0.5 / layout.info.fps
        self.position = 0  # the index of the next frame self.decoded yields
        self.decoded: Iterator = container.decode(stream)

    def wanted_frames(self, segment: Segment) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) for the indices of `segment` this stream still has, ascending."""
        if segment.first_index > self.position and self.layout.frame_times[segment.first_index] > 0:
            self._seek(segment.first_index)
        wanted = iter(segment.indices)
        target = next(wanted)
        for frame in self.decoded:
            if self.deadline.remaining() <= 0:
                raise VideoError(self.path, f"timed out after {self.deadline.timeout:g}s")
            index, self.position = self.position, self.position + 1
            if index == target:
                yield index, frame
                target = next(wanted, None)
                if target is None:
                    return

    def _seconds(self, frame: av.VideoFrame) -> float | None:
        if frame.pts is None:
            return None
        return float(frame.pts * frame.time_base) - self.start_microseconds / 1e6

    def _seek(self, keyframe_index: int) -> None:
        """Position on keyframe `keyframe_index`: the same seek as ffmpeg's -ss, then drop frames before it."""
        keyframe_seconds = float(self.layout.frame_times[keyframe_index])
        self.container.seek(self.start_microseconds + keyframe_seek_microseconds(self.layout, keyframe_index))
        self.decoded = self.container.decode(self.stream)
        for frame in self.decoded:
            seconds = self._seconds(frame)
            if seconds is not None and seconds < keyframe_seconds - self.half_frame_seconds:
                continue
            if seconds is None or seconds > keyframe_seconds + self.half_frame_seconds:
                break  # landed past the keyframe, or cannot tell: decode from the start instead
            self.decoded, self.position = itertools.chain([frame], self.decoded), keyframe_index
            return
        reason = f"seek to frame {keyframe_index} was not exact; decoding from the start"
        warn_slow_fallback("pyav inexact seek", self.path, reason, SEEKABLE_COPIES_ADVICE)
        self.container.seek(self.start_microseconds)
        self.decoded, self.position = self.container.decode(self.stream), 0


def convert_into(frame: av.VideoFrame, out: np.ndarray, size: tuple[int, int], threads: int | None) -> None:
    """Write `frame` as (H, W, 3) uint8 RGB at `size` into `out`, through this process's filter graph for it."""
    key = (frame.width, frame.height, frame.format.name, frame.rotation, frame.colorspace, frame.color_range,
           frame.color_primaries, frame.color_trc, size, threads)
    graphs = _graphs_by_thread.setdefault((os.getpid(), threading.get_ident()), collections.OrderedDict())
    graph = graphs.pop(key, None)  # put back below, last: the least recently used is first
    if graph is None:
        graph = _build_graph(frame, size, threads)
        while len(graphs) >= CACHED_GRAPHS:
            graphs.popitem(last=False)
    graph.vpush(frame)
    # rgb24's to_ndarray is a view of the filtered frame's plane (line padding skipped): this is the one copy.
    out[...] = graph.vpull().to_ndarray()
    graphs[key] = graph  # not reached after an error: a graph that failed mid-frame is not reused


# By process and thread: a graph is not thread-safe, and a forked loader worker builds its own graphs and never runs,
# nor frees, those it inherited (freeing one would join threads that did not survive the fork).
_graphs_by_thread: dict[tuple[int, int], collections.OrderedDict[tuple, av.filter.Graph]] = {}


def _build_graph(frame: av.VideoFrame, size: tuple[int, int], threads: int | None) -> av.filter.Graph:
    graph = av.filter.Graph()
    if threads is not None:
        graph.threads = threads
    time_base = frame.time_base or fractions.Fraction(1, 90000)  # the buffer source needs one; scale ignores it
    nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=time_base)]
    rotation = round(frame.rotation / 90) * 90 % 360
    rotation = rotation - 360 if rotation > 180 else rotation  # 270 -> -90
    for name, argument in _ROTATION_FILTERS.get(rotation, []):
        nodes.append(graph.add(name, argument))
    shown_size = (frame.height, frame.width) if rotation in (90, -90) else (frame.width, frame.height)
    if size != shown_size:
        flags = scale_flags(shown_size, size)
        nodes.append(graph.add("scale", f"{size[0]}:{size[1]}:flags={flags}"))
    nodes += [graph.add("format", "rgb24"), graph.add("buffersink")]
    graph.link_nodes(*nodes).configure()
    return graph
