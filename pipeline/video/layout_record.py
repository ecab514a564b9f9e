"""A probed FrameLayout as a small JSON record, so a video is probed once (in stage one, or by `prepare`)
and read many times (every epoch of stage two, every eval run) without probing again.

    record = layout_record(probe_layout(path))           # JSON-ready dict, with the file's size
    layout = layout_from_record(path, record)             # the same FrameLayout; None if the file changed
    record = layout_record(layout, sha256=sha256_file(path))  # stage one: with the file's content hash

Frame times are stored exactly and compactly as runs of equal steps in the stream's ticks: a constant
frame rate video is one run `[first_tick, step, count]`, a variable one a few more. The file's size is
kept beside it: a file that changed since (replaced, re-encoded, half-copied) gets None and is probed
again by the caller. Not its modification time: the record is part of what stage one writes (its bytes
must not depend on when the videos were copied), and a dataset copied or re-mounted without its mtimes
must keep its stored layouts. A file replaced by another of exactly the same size goes unnoticed.

Stage one also keeps the sha256 of the file's bytes (`record["file"]["sha256"]`, 64 hex digits): evaluation
matches a DistInit init's pretraining videos against its test videos by content, so a renamed copy of a test
video is caught (evaluate/overlap.py). Only stage one pays for it (it reads each file whole anyway); prepare's
and eval's records of the files they probe leave it out. Version 2 added the field; a version-1 record (a
prepared folder written before) holds the same layout fields and is still read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from distinit.pipeline.video.probe import FrameLayout, VideoInfo

# 2: the file's stamp may carry its content hash ("sha256"); the layout fields are those of version 1.
RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)


def layout_record(layout: FrameLayout, sha256: str | None = None) -> dict[str, Any]:
    """`layout` as a JSON-ready dict (see the module docstring); stat()s the file for its size. `sha256`: the
    file's content hash (pipeline.hashing.sha256_file, streaming), kept in the record's file stamp when given."""
    info = layout.info
    status = os.stat(info.path)
    stamp: dict[str, Any] = {"size": status.st_size}
    if sha256 is not None:
        stamp["sha256"] = str(sha256)
    ticks = np.rint(layout.frame_times / layout.tick_seconds).astype(np.int64)
    return {
        "version": RECORD_VERSION,
        "fps": info.fps,
        "frame_count": info.frame_count,
        "duration": info.duration,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
        "tick_seconds": layout.tick_seconds,
        "frame_ticks": tick_runs(ticks),
        "keyframes": [int(index) for index in layout.keyframe_indices],
        "seekable": layout.seekable,
        "file": stamp,
    }


def layout_from_record(path: str | os.PathLike, record: dict[str, Any] | None) -> FrameLayout | None:
    """The FrameLayout `record` describes, for `path`; None when there is no usable record or the file's size
    differs from the record's (the caller probes it again)."""
    if not record or record.get("version") not in READABLE_VERSIONS:
        return None
    path = os.fspath(path)
    try:
        status = os.stat(path)
    except OSError:
        return None
    stamp = record.get("file") or {}
    if stamp.get("size") != status.st_size:
        return None
    ticks = ticks_from_runs(record["frame_ticks"])
    info = VideoInfo(path=path, duration=record["duration"], fps=record["fps"], frame_count=record["frame_count"],
                     width=record["width"], height=record["height"], codec=record["codec"])
    return FrameLayout(info=info, frame_times=ticks * record["tick_seconds"],
                       keyframe_indices=np.asarray(record["keyframes"], dtype=np.int64),
                       tick_seconds=record["tick_seconds"], seekable=record["seekable"])


def tick_runs(ticks: np.ndarray) -> list[list[int]]:
    """Ascending ticks as runs [first, step, count]: ticks first, first + step, ... (count of them)."""
    runs: list[list[int]] = []
    position = 0
    while position < len(ticks):
        first = int(ticks[position])
        if position + 1 == len(ticks):
            runs.append([first, 0, 1])
            break
        step = int(ticks[position + 1] - ticks[position])
        count = 2
        while position + count < len(ticks) and ticks[position + count] - ticks[position + count - 1] == step:
            count += 1
        runs.append([first, step, count])
        position += count
    return runs


def ticks_from_runs(runs: list[list[int]]) -> np.ndarray:
    """The inverse of tick_runs: (frame_count,) int64."""
    parts = [first + step * np.arange(count, dtype=np.int64) for first, step, count in runs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def record_sha256(record: dict[str, Any] | None) -> str | None:
    """The content hash a layout record keeps (stage one's records); None for one without (older, or not stage
    one's)."""
    stamp = (record or {}).get("file") or {}
    value = stamp.get("sha256")
    return value if isinstance(value, str) and len(value) == 64 else None
