"""Random access to a finished target cache, by row and by video.

HDF5 handles must not cross a fork, so shards are opened lazily, per process: a DataLoader worker that
inherits a store (fork) or unpickles one (spawn) opens its own read-only handles on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header
from distinit.pipeline.shards.format import ShardError
from distinit.pipeline.shards.manifest import read_manifest
from distinit.pipeline.shards.chunk_reads import ChunkReader
from distinit.pipeline.shards.video_index import VideoIndex, read_video_index
from distinit.pipeline.shards.video_rows import VideoRows

logger = logging.getLogger(__name__)


class TargetStore:
    """A stage-one target cache (`targets/<dataset>/<key>/`) opened read-only.

    Rows are numbered globally: shard 0's rows, then shard 1's, and so on, in the manifest's order.
    """

    def __init__(self, targets_dir: str | os.PathLike):
        self.targets_dir = Path(targets_dir)
        self.manifest = read_manifest(self.targets_dir)
        self.shard_paths = [self.targets_dir / entry["file"] for entry in self.manifest["shards"]]
        self.shard_rows = np.array([int(entry["rows"]) for entry in self.manifest["shards"]], dtype=np.int64)
        # offsets[i] = global index of shard i's first row; offsets[-1] = total rows.
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self._handles: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._owner_pid = os.getpid()
        self._teachers: list[dict[str, Any]] | None = None
        self._video_table: VideoRows | None = None
        self._video_index: VideoIndex | None = None
        self._chunks: ChunkReader | bool | None = None
        self._video_positions: dict[str, int] | None = None
        self._check_shards()

    def _check_shards(self) -> None:
        """Refuse a cache whose shards do not match the manifest or lack a teacher's view boxes, naming the shard."""
        box_keys = [fmt.view_box_key(teacher["name"]) for teacher in self.manifest.get("teachers", [])]
        for path, expected_rows in zip(self.shard_paths, self.shard_rows):
            if not path.is_file():
                raise ShardError(
                    f"{path}: shard listed in the manifest is missing; rerun `distinit extract` for it, then finalize"
                )
            try:
                with header.open_read_only(path) as shard:
                    rows = header.row_count(shard)
                    no_view = [key for key in box_keys if key not in shard]
            except (OSError, KeyError) as error:
                raise ShardError(f"{path}: unreadable shard ({error}); run `distinit verify {self.targets_dir}`") from None
            if no_view:
                # Written by the format-4 code before views were stored: the same stage key, so make keeps it.
                raise ShardError(f"{path}: no {no_view[0]} (the part of the frame the teacher saw); delete "
                                 f"{self.targets_dir} and re-run `distinit extract` with the options it was made with")
            if rows != expected_rows:
                raise ShardError(
                    f"{path}: {rows} rows, the manifest says {expected_rows}; run `distinit verify {self.targets_dir}`"
                )

    # ------------------------------------------------------------------ handles
    def _shard(self, position: int) -> h5py.File:
        if os.getpid() != self._owner_pid:
            # Inherited through fork: the parent's handles belong to the parent; forget them unclosed.
            self._handles, self._datasets = {}, {}
            self._owner_pid = os.getpid()
        handle = self._handles.get(position)
        if handle is None:
            # No chunk cache: a clip reads a chunk or two of each output once; a cache per dataset per shard per
            # worker (1 MiB each by default) would add up to gigabytes at Kinetics size and save nothing.
            handle = header.open_read_only(self.shard_paths[position], chunk_cache_bytes=0)
            self._handles[position] = handle
        return handle

    def _dataset(self, position: int, name: str) -> h5py.Dataset:
        # Cached: looking a dataset up by path costs more than reading one row from the chunk cache.
        shard = self._shard(position)
        dataset = self._datasets.get((position, name))
        if dataset is None:
            dataset = self._datasets[(position, name)] = shard[name]
        return dataset

    def close(self) -> None:
        if os.getpid() == self._owner_pid:
            for handle in self._handles.values():
                handle.close()
        self._handles, self._datasets = {}, {}
        if self._chunks:
            self._chunks.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_datasets"] = {}, {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._owner_pid = os.getpid()

    def __enter__(self) -> "TargetStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def teachers(self) -> list[dict[str, Any]]:
        """The teachers' `describe()` dicts, as stored in the shards' attributes."""
        if self._teachers is None:
            self._teachers = header.teachers(self._shard(0))
        return self._teachers

    @property
    def output_names(self) -> list[str]:
        """`<teacher>/<output>` keys, in the order written."""
        return header.output_keys(self.teachers)

    @property
    def view_box_keys(self) -> dict[str, str]:
        """teacher name -> `<teacher>/view_box`, the dataset of the part of each row's frame it saw."""
        return {teacher["name"]: fmt.view_box_key(teacher["name"]) for teacher in self.teachers}

    def output_spec(self, key: str) -> dict[str, Any]:
        teacher_name, output_name = key.split("/", 1)
        for teacher in self.teachers:
            if teacher["name"] == teacher_name:
                for output in teacher["outputs"]:
                    if output["name"] == output_name:
                        return output
        raise KeyError(f"{self.targets_dir}: no output {key!r}; outputs are {self.output_names}")

    # ------------------------------------------------------------------ rows
    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} outside a store of {len(self)} rows")
        index %= max(len(self), 1)
        position = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return position, index - int(self.offsets[position])

    def row(self, index: int) -> dict[str, Any]:
        """One row: video_id (str), t_seconds (float), frame_index (int), each output as float32 (*shape)."""
        position, local = self._locate(index)
        row: dict[str, Any] = {
            fmt.VIDEO_ID: header.decode_video_ids(self._dataset(position, fmt.VIDEO_ID)[local : local + 1])[0],
            fmt.T_SECONDS: float(self._dataset(position, fmt.T_SECONDS)[local]),
            fmt.FRAME_INDEX: int(self._dataset(position, fmt.FRAME_INDEX)[local]),
        }
        for key in self.output_names:
            row[key] = np.asarray(self._dataset(position, key)[local], dtype=np.float32)
        return row

    def _read_local(self, position: int, local_rows: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """Datasets `names` at rows `local_rows` (sorted, unique) of one shard; reads one slice when they are close
        together. Ids come back as str, times float64, frame indices int64, outputs and view boxes float32."""
        start, stop = int(local_rows[0]), int(local_rows[-1]) + 1
        dense = stop - start <= 4 * len(local_rows)

        def read(name: str) -> np.ndarray:
            dataset = self._dataset(position, name)
            return dataset[start:stop][local_rows - start] if dense else dataset[local_rows]

        return {name: self._convert(name, read(name)) for name in names}

    @staticmethod
    def _convert(name: str, raw: np.ndarray) -> np.ndarray:
        """Ids as str, times float64, frame indices int64, outputs and view boxes float32."""
        if name == fmt.VIDEO_ID:
            return np.array(header.decode_video_ids(raw), dtype=object)
        if name == fmt.T_SECONDS:
            return raw.astype(np.float64)
        if name == fmt.FRAME_INDEX:
            return raw.astype(np.int64)
        return raw.astype(np.float32)

    def _gather(self, indices: Sequence[int] | np.ndarray, empty: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fill `empty` (one array per dataset name, first axis len(indices)) with those rows, in `indices`' order."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"rows outside a store of {len(self)} rows")
        positions = np.searchsorted(self.offsets, indices, side="right") - 1
        for position in np.unique(positions):
            wanted = np.nonzero(positions == position)[0]
            local = indices[wanted] - self.offsets[position]
            unique_local, inverse = np.unique(local, return_inverse=True)
            for name, values in self._read_local(int(position), unique_local, list(empty)).items():
                empty[name][wanted] = values[inverse]
        return empty

    def rows(self, indices: Sequence[int] | np.ndarray, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Rows at `indices`, in that order: video_id (list of str), t_seconds (N,), frame_index (N,), outputs (N, *shape);
        `names`: only those columns and outputs."""
        count = len(np.asarray(indices).reshape(-1))
        empty: dict[str, np.ndarray] = {
            fmt.VIDEO_ID: np.empty(count, dtype=object),
            fmt.T_SECONDS: np.zeros(count, dtype=np.float64),
            fmt.FRAME_INDEX: np.zeros(count, dtype=np.int64),
        }
        for key in self.output_names:
            empty[key] = np.zeros((count, *self.output_spec(key)["shape"]), dtype=np.float32)
        if names is not None:
            empty = {name: empty[name] for name in names}
        result = self._gather(indices, empty)
        if fmt.VIDEO_ID in result:
            result[fmt.VIDEO_ID] = list(result[fmt.VIDEO_ID])
        return result

    def view_boxes(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """teacher name -> (N, 4) float32 (x0, y0, x1, y1) at `indices`: the part of each row's frame, as fractions
        of its width and height, that the teacher's outputs come from (its centre crop, or the whole frame)."""
        count = len(np.asarray(indices).reshape(-1))
        keys = self.view_box_keys
        boxes = self._gather(indices, {key: np.zeros((count, *fmt.VIEW_BOX_SHAPE), np.float32) for key in keys.values()})
        return {teacher: boxes[key] for teacher, key in keys.items()}

    # ------------------------------------------------------------------ videos
    def video_index(self) -> VideoIndex | None:
        """Stage one's packed video index (pipeline.shards.video_index), read once per process; None for a folder
        finalized without one."""
        if self._video_index is None and self.manifest.get("video_index"):
            self._video_index = read_video_index(self.targets_dir, self.manifest["video_index"])
        return self._video_index

    def video_table(self) -> VideoRows:
        """The per-video row table (pipeline.shards.video_rows): the video index's, else built once per process
        from the id and time columns."""
        if self._video_table is None:
            index = self.video_index()
            if index is not None:
                self._video_table = index.rows
            else:
                self._video_table = VideoRows.from_shards(self._shard, self.offsets)
                logger.debug("indexed %d videos over %d rows of %s", len(self._video_table.ids), len(self),
                             self.targets_dir)
        return self._video_table

    def _position(self, video_id: str) -> int:
        if self._video_positions is None:
            self._video_positions = self.video_table().positions()
        try:
            return self._video_positions[video_id]
        except KeyError:
            raise ShardError(
                f"{self.targets_dir}: no rows for video {video_id!r}; `distinit inspect {self.targets_dir}` summarises the cache"
            ) from None

    def video_ids(self) -> list[str]:
        """Every video with at least one row, sorted."""
        return self.video_table().ids.tolist()

    def video_rows(self, video_id: str) -> np.ndarray:
        """Global row indices of one video, sorted by t."""
        return self.video_table().global_rows(self._position(video_id), self)

    def rows_for_video(self, video_id: str) -> dict[str, Any]:
        """All rows of one video sorted by t_seconds (same layout as `rows`)."""
        return self.rows(self.video_rows(video_id))

    def view_boxes_for_video(self, video_id: str) -> dict[str, np.ndarray]:
        """Each teacher's view boxes of one video's rows, sorted by t_seconds (same layout as `view_boxes`)."""
        return self.view_boxes(self.video_rows(video_id))

    def video_view_boxes(self) -> dict[str, np.ndarray]:
        """teacher name -> (videos, 4) float32: per video of `video_table()`, the part of the frame the teacher saw
        in every one of the video's rows (the intersection of its rows' boxes)."""
        index = self.video_index()
        if index is not None:
            return index.view_boxes
        return self.video_table().view_boxes(self._shard, self.offsets, self.view_box_keys)

    def read_video_rows(self, position: int, rows: slice | np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Datasets `names` at rows `rows` of video `position` of `video_table()` (a slice or ascending indices into
        its time-ordered rows): one contiguous read per dataset when the video is one run (what stage one writes).
        Outputs come back float32 (*shape), as from `rows`."""
        table = self.video_table()
        if not table.contiguous or not isinstance(rows, slice):
            return self.rows(table.global_rows(position, self)[rows], names)
        start, stop, _ = rows.indices(int(table.counts[position]))
        shard, first = int(table.shard[position]), int(table.first[position])
        reader = self._chunk_reader()
        return {name: self._convert(name, reader.read(name, shard, first + start, first + stop)
                                    if reader is not None and name in reader.tables
                                    else self._dataset(shard, name)[first + start:first + stop]) for name in names}

    def _chunk_reader(self) -> ChunkReader | None:
        """Reads of outputs by pread from the video index's chunk tables (pipeline.shards.chunk_reads); None
        without an index."""
        if self._chunks is None:
            index = self.video_index()
            self._chunks = ChunkReader(self.shard_paths, index.chunks) if index is not None and index.chunks else False
        return self._chunks or None

    def iter_blocks(self, names: Iterable[str], block_rows: int = 4096):
        """Yield (shard position, {name: array}) blocks covering every row once, for streaming summaries."""
        names = list(names)
        for position in range(len(self.shard_paths)):
            shard = self._shard(position)
            for start in range(0, int(self.shard_rows[position]), block_rows):
                yield position, {name: shard[name][start : start + block_rows] for name in names}
