"""Many videos' stored layout records (pipeline.video.layout_record) packed into flat numpy arrays.

Stage two keeps the layout of every video it reads clips from: at Kinetics size (240k videos) the records as
JSON dicts are ~2 KB of Python objects each, ~0.5 GB per process, and forked DataLoader workers copy the pages
they touch. Here each field is one array over the videos, and frame-time runs and keyframes are flat arrays
with offsets: ~100 bytes per video of pages that workers only read, so they stay shared.

    table = LayoutTable(records)                      # records[i]: a layout record, or None (probe it)
    table.has(i), table.size(i)                       # whether video i has a usable record; its file's size
    layout = table.layout(i, path)                    # the FrameLayout, as layout_from_record builds it

`layout` does not stat the file: the caller checks the size once (LayoutTable.size against os.stat) and drops
or re-probes a video whose file changed, instead of paying a syscall per clip.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from distinit.pipeline.packed import ragged
from distinit.pipeline.video.layout_record import READABLE_VERSIONS, ticks_from_runs
from distinit.pipeline.video.probe import FrameLayout, VideoInfo


class LayoutTable:
    """Layout records by position (see the module docstring); a position without a usable record has none."""

    def __init__(self, records: Sequence[dict[str, Any] | None]):
        count = len(records)
        usable = [record if record and record.get("version") in READABLE_VERSIONS else None for record in records]
        self.present = np.array([record is not None for record in usable], dtype=bool)
        blank = {"fps": 0.0, "frame_count": 0, "duration": 0.0, "width": 0, "height": 0, "codec": "",
                 "tick_seconds": 0.0, "frame_ticks": [], "keyframes": [], "seekable": False, "file": {}}
        filled = [record if record is not None else blank for record in usable]
        self.fps = np.fromiter((record["fps"] for record in filled), np.float64, count)
        self.frame_count = np.fromiter((record["frame_count"] for record in filled), np.int64, count)
        self.duration = np.fromiter((record["duration"] for record in filled), np.float64, count)
        self.width = np.fromiter((record["width"] for record in filled), np.int32, count)
        self.height = np.fromiter((record["height"] for record in filled), np.int32, count)
        self.tick_seconds = np.fromiter((record["tick_seconds"] for record in filled), np.float64, count)
        self.seekable = np.fromiter((bool(record["seekable"]) for record in filled), bool, count)
        self.file_size = np.fromiter(((record.get("file") or {}).get("size", -1) for record in filled), np.int64, count)
        self.codec_names = sorted({str(record["codec"]) for record in filled})
        codes = {name: code for code, name in enumerate(self.codec_names)}
        self.codec = np.fromiter((codes[str(record["codec"])] for record in filled), np.int16, count)
        # Frame ticks as runs (first, step, count), and keyframe indices: flat, with offsets per video.
        self.runs, self.run_offsets = ragged(
            [np.asarray(record["frame_ticks"], dtype=np.int64).reshape(-1, 3) for record in filled], np.int64)
        self.keyframes, self.keyframe_offsets = ragged(
            [np.asarray(record["keyframes"], dtype=np.int64) for record in filled], np.int32)

    # The arrays that make the table (stage one's video index stores them: pipeline.shards.video_index).
    ARRAYS = ("present", "fps", "frame_count", "duration", "width", "height", "tick_seconds", "seekable", "file_size",
              "codec", "runs", "run_offsets", "keyframes", "keyframe_offsets")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], codec_names: list[str]) -> "LayoutTable":
        table = cls.__new__(cls)
        for name in cls.ARRAYS:
            setattr(table, name, arrays[name])
        table.codec_names = list(codec_names)
        return table

    def without(self, positions: np.ndarray) -> "LayoutTable":
        """This table with the records at `positions` dropped (their videos are probed instead)."""
        table = LayoutTable.from_arrays(self.to_arrays(), self.codec_names)
        table.present = self.present.copy()
        table.present[positions] = False
        return table

    def __len__(self) -> int:
        return len(self.present)

    def has(self, position: int) -> bool:
        return bool(self.present[position])

    def size(self, position: int) -> int:
        """The file size the record was made from (-1: not recorded)."""
        return int(self.file_size[position])

    def layout(self, position: int, path: str | os.PathLike) -> FrameLayout:
        """Video `position`'s FrameLayout for `path` (which must have a record: `has`)."""
        if not self.present[position]:
            raise KeyError(f"no stored layout for video {position}")
        runs = self.runs[self.run_offsets[position]:self.run_offsets[position + 1]]
        ticks = ticks_from_runs(runs)
        tick_seconds = float(self.tick_seconds[position])
        info = VideoInfo(path=os.fspath(path), duration=float(self.duration[position]), fps=float(self.fps[position]),
                         frame_count=int(self.frame_count[position]), width=int(self.width[position]),
                         height=int(self.height[position]), codec=self.codec_names[self.codec[position]])
        keyframes = self.keyframes[self.keyframe_offsets[position]:self.keyframe_offsets[position + 1]]
        return FrameLayout(info=info, frame_times=ticks * tick_seconds, keyframe_indices=keyframes.astype(np.int64),
                           tick_seconds=tick_seconds, seekable=bool(self.seekable[position]))

    @property
    def nbytes(self) -> int:
        return int(sum(array.nbytes for array in self.to_arrays().values()))
