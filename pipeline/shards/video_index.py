"""`video_index.h5`: what stage two needs of every video at start-up, packed once by stage one's finalize.

At Kinetics size (240k videos, 4.8M rows) building it at every start costs each rank ~10 s: the id column is
1.2 GB of fixed-length strings to decompress, and layouts.jsonl 74 MB of JSON to parse. Finalize builds it once
from the shards and the layouts it has just gathered, and every rank then reads ~100 MB of flat arrays:

    /rows/<name>        the per-video row table (pipeline.shards.video_rows: ids, shard, first row, counts, times)
    /view_box/<teacher> (videos, 4) float32: the part of the frame the teacher saw in every row of the video
    /layout/<name>      the videos' stored layouts (pipeline.video.layout_table), attribute codec_names (JSON)
    /sha256             (videos, 32) uint8: each file's content hash from its layout (zeros: none stored)
    /chunks/<n>         each teacher output's chunks: file offset and size per chunk of every shard
                        (pipeline.shards.chunk_reads: stage two reads a clip's rows with one pread per chunk)

Positions follow the sorted video ids. Written like the shards (HDF5 1.10 format, no timestamps, fletcher32 on
every dataset), so the same shards give the same bytes; listed in the manifest with its sha256, which `verify`
checks. A folder without one (none was written before this file existed in format 5) is indexed from the shards.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from distinit.pipeline.atomic import atomic_path
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header
from distinit.pipeline.shards.chunk_reads import ChunkTable, chunk_table
from distinit.pipeline.shards.format import ShardError
from distinit.pipeline.shards.layouts import REWRITE_HINT
from distinit.pipeline.shards.writer import create_group
from distinit.pipeline.shards.video_rows import VideoRows
from distinit.pipeline.video.layout_record import record_sha256
from distinit.pipeline.video.layout_table import LayoutTable

logger = logging.getLogger(__name__)

INDEX_NAME = "video_index.h5"


class VideoIndex:
    """The index's tables (module docstring), in memory."""

    def __init__(self, rows: VideoRows, view_boxes: dict[str, np.ndarray], layouts: LayoutTable, sha256: np.ndarray,
                 chunks: dict[str, ChunkTable] | None = None):
        self.rows, self.view_boxes, self.layouts, self.sha256 = rows, view_boxes, layouts, sha256
        self.chunks = chunks or {}

    def content_hash(self, position: int) -> str | None:
        digest = self.sha256[position]
        return digest.tobytes().hex() if digest.any() else None


def build_video_index(shard_paths: Sequence[Path], layouts: dict[str, dict[str, Any]]) -> VideoIndex:
    """The index of finished shards, given their gathered layout records ({video id: record})."""
    handles: dict[int, h5py.File] = {}

    def open_shard(position: int) -> h5py.File:
        if position not in handles:
            handles[position] = header.open_read_only(shard_paths[position])
        return handles[position]

    try:
        counts = [header.row_count(open_shard(position)) for position in range(len(shard_paths))]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = VideoRows.from_shards(open_shard, offsets)
        teachers = header.teachers(open_shard(0)) if shard_paths else []
        boxes = rows.view_boxes(open_shard, offsets, {teacher["name"]: fmt.view_box_key(teacher["name"])
                                                      for teacher in teachers})
        chunks = {}
        for key in header.output_keys(teachers):
            table = chunk_table([open_shard(position)[key] for position in range(len(shard_paths))])
            if table is not None:
                chunks[key] = table
    finally:
        for handle in handles.values():
            handle.close()
    records = [layouts.get(video_id) for video_id in rows.ids.tolist()]
    sha256 = np.zeros((len(records), 32), dtype=np.uint8)
    for position, record in enumerate(records):
        digest = record_sha256(record)
        if digest is not None:
            sha256[position] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    return VideoIndex(rows, boxes, LayoutTable(records), sha256, chunks)


def write_video_index(targets_dir: Path, index: VideoIndex) -> dict[str, Any]:
    """Write `video_index.h5` atomically; its manifest entry."""
    target = Path(targets_dir) / INDEX_NAME
    with atomic_path(target) as temporary:
        with h5py.File(temporary, "w", libver=fmt.LIBVER) as handle:
            def put(group: h5py.Group, name: str, values: np.ndarray) -> None:
                # Chunked (fletcher32 needs chunks) in pieces of at most 64k rows; an empty array has no chunks.
                values = np.ascontiguousarray(values)
                chunks = (min(len(values), 1 << 16), *values.shape[1:]) if len(values) else None
                group.create_dataset(name, data=values, chunks=chunks, fletcher32=chunks is not None, track_times=False)

            groups = {name: create_group(handle, name) for name in ("rows", "view_box", "layout")}
            for name, values in index.rows.to_arrays().items():
                put(groups["rows"], name, values)
            for teacher, values in index.view_boxes.items():
                put(groups["view_box"], teacher, values)
            for name, values in index.layouts.to_arrays().items():
                put(groups["layout"], name, values)
            groups["layout"].attrs["codec_names"] = json.dumps(index.layouts.codec_names)
            put(handle, "sha256", index.sha256)
            chunk_groups = create_group(handle, "chunks")
            for number, (key, table) in enumerate(index.chunks.items()):
                group = create_group(chunk_groups, str(number))  # output keys hold a "/": named by number
                group.attrs["output"], group.attrs["chunk_rows"] = key, table.chunk_rows
                group.attrs["dtype"], group.attrs["row_shape"] = table.dtype.str, json.dumps(list(table.row_shape))
                for name in ("offsets", "sizes", "shard_starts"):
                    put(group, name, getattr(table, name))
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
    return {"file": INDEX_NAME, "sha256": sha256_file(target), "videos": len(index.rows), "bytes": target.stat().st_size}


def read_video_index(targets_dir: Path, entry: dict[str, Any]) -> VideoIndex:
    """The index a manifest entry lists; one line naming the file and what to do when it cannot be read."""
    path = Path(targets_dir) / entry.get("file", INDEX_NAME)
    try:
        with h5py.File(path, "r", locking=False) as handle:
            rows = VideoRows.from_arrays({name: handle[f"rows/{name}"][()] for name in handle["rows"]})
            boxes = {teacher: handle[f"view_box/{teacher}"][()] for teacher in handle.get("view_box", {})}
            layouts = LayoutTable.from_arrays({name: handle[f"layout/{name}"][()] for name in handle["layout"]},
                                              json.loads(handle["layout"].attrs["codec_names"]))
            sha256 = handle["sha256"][()]
            chunks = {}
            for group in handle.get("chunks", {}).values():
                chunks[str(group.attrs["output"])] = ChunkTable(
                    chunk_rows=int(group.attrs["chunk_rows"]), row_shape=tuple(json.loads(group.attrs["row_shape"])),
                    dtype=np.dtype(str(group.attrs["dtype"])), offsets=group["offsets"][()], sizes=group["sizes"][()],
                    shard_starts=group["shard_starts"][()])
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(f"{path}: cannot read the video index ({error}); {REWRITE_HINT}") from None
    if len(rows) != entry.get("videos"):
        raise ShardError(f"{path}: {len(rows)} videos, the manifest says {entry.get('videos')}; {REWRITE_HINT}")
    return VideoIndex(rows, boxes, layouts, sha256, chunks)


def video_index_problems(targets_dir: Path, entry: dict[str, Any] | None) -> list[str]:
    """For `verify`: the index file against its manifest entry (sha256, readable, its video count)."""
    path = Path(targets_dir) / INDEX_NAME
    if not entry:
        return [f"{path}: not in the manifest; delete it or {REWRITE_HINT}"] if path.exists() else []
    if not path.is_file():
        return [f"{path}: listed in the manifest but missing; {REWRITE_HINT}"]
    if sha256_file(path) != entry.get("sha256"):
        return [f"{path}: sha256 differs from the manifest's (changed or damaged); {REWRITE_HINT}"]
    try:
        read_video_index(targets_dir, entry)
    except ShardError as error:
        return [str(error)]
    return []
