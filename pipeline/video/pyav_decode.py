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

import fractions
import itertools
import logging
from typing import Iterator

import av
import numpy as np

from pipeline.errors import VideoError
from pipeline.video.ffmpeg_decode import scale_flags
from pipeline.video.probe import FrameLayout
from pipeline.video.segments import Deadline, DecodePlan, Segment, keyframe_seek_microseconds

logger = logging.getLogger(__name__)

# The command line's autorotate filters, by the display matrix's counter-clockwise angle (PyAV's `rotation`).
_ROTATION_FILTERS = {
    90: [("transpose", "cclock")],
    -90: [("transpose", "clock")],
    180: [("hflip", None), ("vflip", None)],
}


def decode_segments(plan: DecodePlan) -> np.ndarray:
    """The frames of the plan's segments, in order: (N, H, W, 3) uint8, N the number of indices they hold.

    A video that ends before a wanted frame repeats the last frame decoded (as the ffmpeg backend pads a
    short read); nothing decoded at all is a VideoError.
    """
    path, deadline = plan.path, plan.deadline
    rows: list[np.ndarray | None] = []
    try:
        with av.open(path, metadata_errors="replace", timeout=max(deadline.remaining(), 0.001)) as container:
            stream = _video_stream(container, path)
            stream.codec_context.thread_type = "AUTO"  # frame and slice threads, as the command line
            stream.codec_context.thread_count = 0 if plan.threads is None else plan.threads
            reader = _FrameReader(container, stream, plan.layout, deadline, path)
            converter = _RGBConverter(plan.size, plan.threads)
            for segment in plan.segments:
                found = {index: converter(frame) for index, frame in reader.wanted_frames(segment)}
                rows += [found.get(index) for index in segment.indices]
    except av.FFmpegError as error:
        if deadline.remaining() <= 0:
            raise VideoError(path, f"timed out after {deadline.timeout:g}s") from None
        raise VideoError(path, describe_error(error)) from None
    return _fill_missing(rows, path)


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


def _fill_missing(rows: list[np.ndarray | None], path: str) -> np.ndarray:
    decoded = [row for row in rows if row is not None]
    if not decoded:
        raise VideoError(path, "decoded no frames")
    if len(decoded) < len(rows):
        logger.debug("%s: decoded %d of %d frames; repeating the last one", path, len(decoded), len(rows))
        previous = decoded[0]
        for position, row in enumerate(rows):
            if row is None:
                rows[position] = previous
            else:
                previous = row
    return np.stack(rows)


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
        logger.debug("%s: seek to frame %d was not exact; decoding from the start", self.path, keyframe_index)
        self.container.seek(self.start_microseconds)
        self.decoded, self.position = self.container.decode(self.stream), 0


class _RGBConverter:
    """Decoded frames to (H, W, 3) uint8 RGB at `size`, through the filters the ffmpeg command line uses."""

    def __init__(self, size: tuple[int, int], threads: int | None):
        self.size, self.threads = size, threads
        self.graph = None
        self.shape_key: tuple | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        shape_key = (frame.width, frame.height, frame.format.name, frame.rotation)
        if shape_key != self.shape_key:  # the first frame, or the stream changed size or format
            self.graph, self.shape_key = self._build(frame), shape_key
        self.graph.vpush(frame)
        return self.graph.vpull().to_ndarray()

    def _build(self, frame: av.VideoFrame):
        graph = av.filter.Graph()
        if self.threads is not None:
            graph.threads = self.threads
        time_base = frame.time_base or fractions.Fraction(1, 90000)  # the buffer source needs one; scale ignores it
        nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=time_base)]
        rotation = round(frame.rotation / 90) * 90 % 360
        rotation = rotation - 360 if rotation > 180 else rotation  # 270 -> -90
        for name, argument in _ROTATION_FILTERS.get(rotation, []):
            nodes.append(graph.add(name, argument))
        shown_size = (frame.height, frame.width) if rotation in (90, -90) else (frame.width, frame.height)
        if self.size != shown_size:
            flags = scale_flags(shown_size, self.size)
            nodes.append(graph.add("scale", f"{self.size[0]}:{self.size[1]}:flags={flags}"))
        nodes += [graph.add("format", "rgb24"), graph.add("buffersink")]
        graph.link_nodes(*nodes).configure()
        return graph
