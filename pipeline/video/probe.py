"""What a video file holds: duration, frame rate, exact frame count, size, codec, keyframes.

imageio-ffmpeg ships no ffprobe, so one ffmpeg pass does the job with any ffmpeg binary:
`ffmpeg -i FILE -map 0:V:0 -c copy -f framecrc -` copies the first real video stream (cover art
excluded) packet by packet without decoding it. stdout then lists the time base, codec, size and one
line per packet (timestamps, keyframe flag), which gives the exact frame count, every frame's
presentation time and where the keyframes are; stderr carries the stream header (rotation). A 10 s
clip takes a few tens of milliseconds. A file holding clearly less than its header declares (cut short)
is refused (pipeline.video.truncation). The same numbers would come from `ffprobe -show_packets`, so
there is one code path whichever ffmpeg is configured.

Only shown frames count. An MP4 cut by stream copy (`ffmpeg -ss 1.3 -i in.mp4 -c copy cut.mp4`) starts at
the keyframe before the cut, and its edit list hides the frames before it: their packets are flagged
discard (negative pts) and every decoder (ffmpeg, PyAV, TorchCodec) drops their frames. The probe drops
those packets too, so frame 0 is the first shown frame, at time 0, and keyframe indices count shown frames
(the first shown frame may be no keyframe: decoding before the first shown keyframe starts at frame 0).

Timestamps are in seconds from the start of the file as ffmpeg's `-ss` counts it (ffmpeg shifts both
by the container's start time), so `decode` can seek to them exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import logging
import os
import re
import threading

import ffmpeg
import numpy as np

from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.process import GLOBAL_ARGUMENTS, check_video_path, ffmpeg_reason, run_ffmpeg
from distinit.pipeline.video.truncation import truncation_problem

logger = logging.getLogger(__name__)

_NO_TIMESTAMP = -9223372036854775808  # AV_NOPTS_VALUE as framecrc prints it
_KEYFRAME_FLAG = 0x1  # AV_PKT_FLAG_KEY
# AV_PKT_FLAG_DISCARD: a packet decoded only to build references, its frame not shown; the MP4 demuxer sets
# it on the pre-roll of an edit list (a stream-copy cut starts at the keyframe before the cut and hides
# the frames before it). Decoders drop those frames, so they are no frames of the video.
_DISCARD_FLAG = 0x4
_ROTATION = re.compile(r"display ?matrix: rotation of (-?[0-9.]+) degrees", re.IGNORECASE)
_INPUT_FORMAT = re.compile(r"^Input #0, (.+), from '", re.MULTILINE)
# Containers whose timestamp seeks were checked to land exactly (tests/test_video.py and bench runs);
# others (MPEG-TS/PS, FLV, ...) seek by byte search or to the keyframe after the target.
SEEKABLE_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})
_HEADER_FPS = re.compile(r"Video: .*?, ([0-9.]+) fps")
# A frame rate counts as constant when this share of frame-to-frame steps are the same number of ticks.
_CONSTANT_RATE_SHARE = 0.9
_CACHE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """The first video stream of a file. width/height are the decoded frame size after rotation."""

    path: str
    duration: float
    fps: float
    frame_count: int
    width: int
    height: int
    codec: str


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """VideoInfo plus per-frame timing, which decoding needs to seek exactly and cheaply."""

    info: VideoInfo
    frame_times: np.ndarray  # (frame_count,) float64 presentation times in seconds, ascending
    keyframe_indices: np.ndarray  # (K,) int64 frame indices (presentation order) of keyframes, ascending
    tick_seconds: float  # the stream's time base: timestamps are whole multiples of it
    # Whether a timestamp seek lands exactly. False outside SEEKABLE_FORMATS, with repeated timestamps,
    # and when packets lack presentation timestamps (AVI with B-frames: decoded frames then carry
    # timestamps shifted by the decoder delay, so a seek lands a frame early). Decoding then always
    # starts at frame 0.
    seekable: bool


_cache: collections.OrderedDict[tuple, FrameLayout] = collections.OrderedDict()
_cache_lock = threading.Lock()


def probe(path, timeout: float = 30.0) -> VideoInfo:
    """Duration, fps, exact frame count, size and codec of the first video stream of `path`.

    duration is frame_count / fps. fps is exact for constant-frame-rate video (from the packet
    timestamps, e.g. 30000/1001) and the average rate otherwise. Raises VideoError on anything
    unreadable, truncated, audio-only or slower than `timeout` seconds.
    """
    return probe_layout(path, timeout).info


def probe_layout(path, timeout: float = 30.0) -> FrameLayout:
    """probe() plus frame times and keyframes; cached per file identity (path, inode, size, mtime)."""
    path = os.fspath(path)
    check_video_path(path)
    status = os.stat(path)
    key = (os.path.realpath(path), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    layout = _probe_uncached(path, timeout)
    with _cache_lock:
        _cache[key] = layout
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return layout


def clear_probe_cache() -> None:
    """Forget cached probes (benchmarks time a cold probe; files are re-probed anyway when they change)."""
    with _cache_lock:
        _cache.clear()


def _probe_uncached(path: str, timeout: float) -> FrameLayout:
    stream = ffmpeg.input(path).output("pipe:", map="0:V:0", c="copy", f="framecrc")
    command = stream.compile(cmd=[ffmpeg_binary(), *GLOBAL_ARGUMENTS, "-loglevel", "info"])
    stdout, stderr_text = run_ffmpeg(command, path, timeout)
    # A truncated file whose index survived (moov first) still copies; ffmpeg only logs the cut.
    partial = [line for line in stderr_text.splitlines() if "partial file" in line]
    if partial:
        raise VideoError(path, f"truncated file ({ffmpeg_reason(partial[-1], path)})")
    return _parse_framecrc(path, stdout.decode("utf-8", "replace"), stderr_text)


def _read_framecrc(framecrc_text: str) -> tuple[dict[str, str], list[tuple[int, int, int, bool]], int]:
    """framecrc's headers, (dts, pts, duration, is_keyframe) of each shown frame's packet, and how many
    packets were dropped as discarded (an edit list's pre-roll)."""
    headers: dict[str, str] = {}
    packets: list[tuple[int, int, int, bool]] = []
    discarded = 0
    for line in framecrc_text.splitlines():
        if line.startswith("#"):
            name, _, value = line[1:].partition(":")
            headers[name.split()[0]] = value.strip()
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 6:
            continue
        # framecrc omits the flags field when it is exactly "keyframe"; side data ("S=") may follow.
        flags = next((int(field[2:], 16) for field in fields[6:] if field.startswith("F=")), _KEYFRAME_FLAG)
        if flags & _DISCARD_FLAG:
            discarded += 1
            continue
        packets.append((int(fields[1]), int(fields[2]), int(fields[3]), bool(flags & _KEYFRAME_FLAG)))
    return headers, packets, discarded


def _parse_framecrc(path: str, framecrc_text: str, stderr_text: str) -> FrameLayout:
    headers, packets, discarded = _read_framecrc(framecrc_text)
    if not packets or "dimensions" not in headers:
        lowered = stderr_text.lower()
        cause = f" ({ffmpeg_reason(stderr_text, path)})" if "error" in lowered or "invalid" in lowered else ""
        raise VideoError(path, f"video stream has no frames{cause}")
    tick = fractions.Fraction(headers["tb"])
    width, height = (int(number) for number in headers["dimensions"].split("x"))
    rotation = _ROTATION.search(stderr_text)
    if rotation and round(float(rotation.group(1))) % 180 != 0:
        width, height = height, width  # ffmpeg auto-rotates decoded frames
    ticks, keyframe_indices, has_pts = _presentation_ticks(packets)
    container = _INPUT_FORMAT.search(stderr_text)
    distinct_times = bool(np.all(np.diff(ticks) > 0))  # repeated timestamps make a timestamp seek ambiguous
    seekable = has_pts and distinct_times and container is not None and container.group(1) in SEEKABLE_FORMATS
    if discarded:
        logger.debug("%s: %d pre-roll packets (edit list) are decoded but not shown; not counted", path, discarded)
    if ticks[0] < 0:
        # A shown frame before the file's start (an edit list starting inside a frame): -ss cannot reach it.
        # Decode such a file from its start only, with times counted from its first shown frame.
        logger.debug("%s: first shown frame at %d ticks, before the start; decoding from frame 0", path, ticks[0])
        ticks, seekable = ticks - ticks[0], False
    fps = _frame_rate(ticks, packets, tick, stderr_text)
    truncated = truncation_problem(path, container.group(1) if container else None, len(ticks), fps, stderr_text)
    if truncated is not None:
        raise VideoError(path, truncated)
    info = VideoInfo(
        path=path,
        duration=len(ticks) / fps,
        fps=fps,
        frame_count=len(ticks),
        width=width,
        height=height,
        codec=headers.get("codec_id", "unknown"),
    )
    return FrameLayout(
        info=info,
        frame_times=ticks * float(tick),
        keyframe_indices=keyframe_indices,
        tick_seconds=float(tick),
        seekable=seekable,
    )


def _presentation_ticks(packets: list[tuple[int, int, int, bool]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Sorted presentation timestamps (ticks), presentation indices of keyframes, and whether pts exist."""
    columns = np.array(packets, dtype=np.int64)  # (P, 4): dts, pts, duration, key
    # AVI with B-frames leaves pts unset on some packets; its dts then are the presentation slots.
    use_pts = not np.any(columns[:, 1] == _NO_TIMESTAMP)
    stamps = columns[:, 1] if use_pts else columns[:, 0]
    ticks = np.sort(stamps)
    keyframe_indices = np.unique(np.searchsorted(ticks, stamps[columns[:, 3] == 1]))
    return ticks, keyframe_indices, use_pts


def _frame_rate(ticks: np.ndarray, packets: list, tick: fractions.Fraction, stderr_text: str) -> float:
    steps = np.diff(ticks)
    if len(steps):
        values, counts = np.unique(steps, return_counts=True)
        common = int(values[np.argmax(counts)])
        if common > 0 and counts.max() >= _CONSTANT_RATE_SHARE * len(steps):
            return float(1 / (common * tick))
        span = int(ticks[-1] - ticks[0])
        if span > 0:
            return float(len(steps) / (span * tick))
    if packets[-1][2] > 0:  # a single frame: its own duration
        return float(1 / (packets[-1][2] * tick))
    header = _HEADER_FPS.search(stderr_text)
    if header:
        return float(header.group(1))
    logger.debug("no frame rate found; assuming 1 fps")
    return 1.0
