"""Which rows of a target cache belong to which video, and when, packed for stage two's many workers.

Stage one writes a video's rows one after another, in time order, so a video is one run of rows in one shard.
The table is built from the small columns only (ids as raw bytes, compared without making 4.8M Python strings
at Kinetics size; times), once per process that opens the cache, and holds per video:

    ids[i]                 its id (a StringTable; positions follow the sorted ids)
    shard[i], first[i]     the shard holding its rows and the first row's index in that shard
    times(i)               its rows' t_seconds, ascending (one flat float64 array with offsets)
    global_rows(i)         its rows' global indices (TargetStore numbering), in time order

A cache whose videos are not single time-ordered runs (shards mixed by hand) is still read right: every video's
rows are then kept as a flat index array, sorted by time (stable, so written order breaks ties).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

from distinit.pipeline.packed import StringTable
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header

if TYPE_CHECKING:
    from distinit.pipeline.shards.reader import TargetStore

logger = logging.getLogger(__name__)


class VideoRows:
    """The per-video row table of one TargetStore (module docstring)."""

    @classmethod
    def from_shards(cls, open_shard: Callable[[int], h5py.File], offsets: np.ndarray) -> "VideoRows":
        """The table of the shards `open_shard(0..N-1)` whose global row offsets are `offsets` (N + 1)."""
        table = cls.__new__(cls)
        table._build(open_shard, len(offsets) - 1, offsets)
        return table

    def _build(self, open_shard: Callable[[int], h5py.File], shard_count: int, offsets: np.ndarray) -> None:
        run_ids, run_shards, run_firsts, run_counts, time_parts, ordered = [], [], [], [], [], True
        for position in range(shard_count):
            shard = open_shard(position)
            ids = shard[fmt.VIDEO_ID][:]
            if len(ids) == 0:
                continue
            times = shard[fmt.T_SECONDS][:].astype(np.float64)
            starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
            counts = np.diff(np.concatenate([starts, [len(ids)]]))
            run_ids += header.decode_video_ids(ids[starts])
            run_shards.append(np.full(len(starts), position, dtype=np.int32))
            run_firsts.append(starts.astype(np.int64))
            run_counts.append(counts.astype(np.int64))
            time_parts.append(times)
            # Time order inside each run: every step that is not a run boundary must not go back.
            steps_back = np.flatnonzero(np.diff(times) < 0) + 1
            ordered = ordered and bool(np.isin(steps_back, starts, assume_unique=True).all())
        shards = np.concatenate(run_shards) if run_shards else np.zeros(0, np.int32)
        firsts = np.concatenate(run_firsts) if run_firsts else np.zeros(0, np.int64)
        counts = np.concatenate(run_counts) if run_counts else np.zeros(0, np.int64)
        all_times = np.concatenate(time_parts) if time_parts else np.zeros(0, np.float64)  # in global row order
        order = np.argsort(np.array(run_ids, dtype=str), kind="stable") if run_ids else np.zeros(0, np.int64)
        sorted_ids = [run_ids[run] for run in order]
        unique = len(set(sorted_ids)) == len(sorted_ids)
        self.ids = StringTable(dict.fromkeys(sorted_ids))
        global_firsts = firsts + offsets[shards]
        if unique and ordered:
            self.shard, self.first = shards[order], firsts[order]
            self.counts = counts[order]
            self.offsets = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(self.counts, out=self.offsets[1:])
            self._rows = None
            self._times = all_times[self._all_rows(offsets)]
        else:
            self._general(sorted_ids, order, global_firsts, counts, all_times, shards, firsts)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"ids_blob": self.ids.blob, "ids_offsets": self.ids.offsets, "shard": self.shard, "first": self.first,
                  "counts": self.counts, "offsets": self.offsets, "times": self._times}
        if self._rows is not None:
            arrays["rows"] = self._rows
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "VideoRows":
        table = cls.__new__(cls)
        table.ids = StringTable.from_arrays(arrays["ids_blob"], arrays["ids_offsets"])
        table.shard, table.first, table.counts = arrays["shard"], arrays["first"], arrays["counts"]
        table.offsets, table._times, table._rows = arrays["offsets"], arrays["times"], arrays.get("rows")
        return table

    def view_boxes(self, open_shard: Callable[[int], h5py.File], shard_offsets: np.ndarray,
                   box_keys: dict[str, str]) -> dict[str, np.ndarray]:
        """teacher name -> (videos, 4) float32: per video, the part of the frame the teacher saw in every one of the
        video's rows (the intersection of its rows' boxes), from the box columns (`box_keys`: teacher -> dataset)."""
        if len(self) == 0:
            return {teacher: np.zeros((0, 4), np.float32) for teacher in box_keys}
        rows, starts = self._all_rows(shard_offsets), self.offsets[:-1]
        boxes = {}
        for teacher, key in box_keys.items():
            column = np.concatenate([open_shard(position)[key][:] for position in range(len(shard_offsets) - 1)])[rows]
            low = np.maximum.reduceat(column[:, :2], starts, axis=0)
            high = np.minimum.reduceat(column[:, 2:], starts, axis=0)
            boxes[teacher] = np.concatenate([low, high], axis=1).astype(np.float32)
        return boxes

    def _general(self, sorted_ids, order, global_firsts, counts, all_times, shards, firsts) -> None:
        """Videos spread over several runs or out of time order: an explicit row list per video."""
        logger.warning("the target cache's videos are not each one time-ordered run of rows (shards mixed by hand?); "
                       "reading it through a row list")
        groups: dict[str, list[np.ndarray]] = {}
        for video_id, run in zip(sorted_ids, order):
            groups.setdefault(video_id, []).append(global_firsts[run] + np.arange(counts[run]))
        row_lists = []
        for rows in groups.values():
            rows = np.concatenate(rows)
            row_lists.append(rows[np.argsort(all_times[rows], kind="stable")])
        self.counts = np.array([len(rows) for rows in row_lists], dtype=np.int64)
        self.offsets = np.zeros(len(row_lists) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])
        self._rows = np.concatenate(row_lists) if row_lists else np.zeros(0, np.int64)
        self._times = all_times[self._rows]
        first_runs: dict[str, int] = {}
        for video_id, run in zip(sorted_ids, order):
            first_runs.setdefault(video_id, run)
        self.shard = np.array([shards[run] for run in first_runs.values()], dtype=np.int32)
        self.first = np.array([firsts[run] for run in first_runs.values()], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def contiguous(self) -> bool:
        """Whether each video is one run of rows in one shard (what stage one writes)."""
        return self._rows is None

    def times(self, position: int) -> np.ndarray:
        return self._times[self.offsets[position]:self.offsets[position + 1]]

    def global_rows(self, position: int, store: "TargetStore") -> np.ndarray:
        if self._rows is not None:
            return self._rows[self.offsets[position]:self.offsets[position + 1]]
        start = int(store.offsets[self.shard[position]] + self.first[position])
        return np.arange(start, start + int(self.counts[position]), dtype=np.int64)

    def _all_rows(self, shard_offsets: np.ndarray) -> np.ndarray:
        """Every video's global rows, video after video in table order (offsets[i]:offsets[i + 1] are video i's)."""
        if self._rows is not None:
            return self._rows
        starts = shard_offsets[self.shard] + self.first
        return np.repeat(starts - self.offsets[:-1], self.counts) + np.arange(self.offsets[-1])

    def positions(self) -> dict[str, int]:
        """id -> position (a dict of Python strings: for building, not for keeping in workers)."""
        return {video_id: position for position, video_id in enumerate(self.ids.tolist())}

    @property
    def nbytes(self) -> int:
        arrays = [self.shard, self.first, self.counts, self.offsets, self._times] + ([self._rows] if self._rows is not None else [])
        return int(self.ids.nbytes + sum(array.nbytes for array in arrays))
