"""What stage two knows of every video it may read clips from, built once per rank and shared.

One `ClipVideos` holds, per video of the target cache (positions of the store's video table,
pipeline.shards.video_rows): its rows and their times, each teacher's view box, the file its clips come from (the
original, or `prepare`'s copy) and that file's stored layout, all as flat numpy arrays. The trainer builds one per
rank and hands it to both the training and the held-out dataset; their DataLoader workers inherit it by fork and
only read its arrays, so its pages stay shared (a dict per video would be copied into every worker: ~35 GB per
8-GPU node at Kinetics size, by the issue's estimate; bench/scale.py measures this).

Each file is stat()ed once here: a video whose file is missing, or that `prepare` skipped, is left out of the
datasets and counted once (`left_out`), instead of failing at every epoch against the decode-failure budget; a
stored layout whose file size changed is dropped (the video is probed on first use, once per worker).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distinit.pipeline.datasets import read_manifest
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import json_lines
from distinit.pipeline.packed import StringTable
from distinit.pipeline.prepared.manifest import prepared_files
from distinit.pipeline.shards import TargetStore, stored_layouts
from distinit.pipeline.shards.video_rows import VideoRows
from distinit.pipeline.video.layout_table import LayoutTable

logger = logging.getLogger(__name__)

MOVED_VIDEOS_HINT = "pass --videos <folder> (make: DISTILL_ARGS='--videos <folder>')"


def video_paths(store: TargetStore, videos_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """video id -> file, from the targets folder's videos manifest, under `videos_root` (default: the root
    stage one was given, as its manifest recorded; a relative one is taken from the current folder)."""
    return {video_id: Path(path) for video_id, path in video_files(store, videos_root).items()}


def videos_manifest(store: TargetStore) -> Path:
    """The targets folder's list of its videos (stage one's videos manifest)."""
    return store.targets_dir / (store.manifest.get("extra") or {}).get("videos_manifest", "videos.jsonl")


def video_files(store: TargetStore, videos_root: str | os.PathLike | None = None) -> dict[str, str]:
    """`video_paths` as strings: at Kinetics size a Path per video costs seconds at every start."""
    extra = store.manifest.get("extra") or {}
    root = videos_root if videos_root is not None else extra.get("videos_root")
    manifest_file = videos_manifest(store)
    if root is None:
        raise DistinitError(f"{store.targets_dir}: the manifest does not say where the videos are; {MOVED_VIDEOS_HINT}")
    if not Path(root).is_dir():
        named_by = "--videos" if videos_root is not None else "the targets manifest"
        looked_from = "" if Path(root).is_absolute() else f", looked for from {Path.cwd()}"
        raise DistinitError(f"{root}: the videos folder {named_by} names is not there{looked_from}; {MOVED_VIDEOS_HINT}")
    if not manifest_file.is_file():
        raise DistinitError(f"{manifest_file}: the list of videos is missing; re-run `distinit extract --finalize` on {store.targets_dir}")
    rows = json_lines(manifest_file.read_bytes())
    if rows is None or not all(isinstance(row, dict) and "id" in row and "path" in row for row in rows):
        return {record.id: str(record.path) for record in read_manifest(manifest_file, root)}  # names the bad line
    root = os.fspath(root)
    return {row["id"]: os.path.join(root, row["path"]) for row in rows}


def video_sizes(store: TargetStore) -> dict[str, int | None]:
    """video id -> its file size when stage one listed it (the videos manifest's rows)."""
    path = videos_manifest(store)
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    rows = json_lines(data)
    if rows is None or not all(isinstance(row, dict) and "id" in row for row in rows):
        read_manifest(path, store.targets_dir)  # names the line that is not a manifest row
        rows = []
    return {row["id"]: row.get("size") for row in rows}


@dataclass
class ClipVideos:
    """Per-video facts by table position (module docstring). `store` is closed: each process reopens it."""

    store: TargetStore
    rows: VideoRows
    paths: StringTable  # the file clips come from ("" where there is none)
    layouts: LayoutTable
    available: np.ndarray  # (videos,) bool: the file exists (and, with prepare, a copy was made)
    view_boxes: dict[str, np.ndarray]  # teacher -> (videos, 4) float32: what it saw in every row of the video
    missing: int  # videos whose file is not there
    unprepared: int  # videos prepare made no copy of

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def left_out(self) -> int:
        return self.missing + self.unprepared

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.paths.nbytes + self.layouts.nbytes + self.available.nbytes
                   + sum(boxes.nbytes for boxes in self.view_boxes.values()))


def build_clip_videos(store: TargetStore, *, videos_root: str | os.PathLike | None = None,
                      prepared: str | os.PathLike | None = None, short_side: int | None = None) -> ClipVideos:
    """The ClipVideos of `store` (open), its videos read from the originals under `videos_root` (default: where
    stage one found them) or from the `prepared` folder's copies made at `short_side`."""
    rows = store.video_table()
    ids = rows.ids.tolist()
    index = store.video_index()
    if prepared is not None:
        copies = prepared_files(prepared, short_side=short_side, sources=video_sizes(store))
        every_path = {video_id: path for video_id, (path, _) in copies.items()}
        layouts = LayoutTable([copies[video_id][1] if video_id in copies else None for video_id in ids])
    else:
        every_path = video_files(store, videos_root)
        not_listed = [video_id for video_id in ids if video_id not in every_path]
        if not_listed:
            raise DistinitError(f"{store.targets_dir}: video {not_listed[0]!r} is not in the videos manifest "
                                f"({len(not_listed)} missing)")
        if index is not None:  # stage one's packed layouts: no JSON to parse
            layouts = index.layouts
        else:
            records = stored_layouts(store.targets_dir)
            layouts = LayoutTable([records.get(video_id) for video_id in ids])
    # One stat per file, here, once per rank: what is missing is left out; a stored layout whose file's size changed
    # is dropped (that video is probed on first use).
    sizes = np.full(len(ids), -1, dtype=np.int64)
    unprepared, first_missing = 0, None
    for position, video_id in enumerate(ids):
        path = every_path.get(video_id)
        if path is None:  # prepare skipped it (the originals' case was refused above)
            unprepared += 1
            continue
        try:
            sizes[position] = os.stat(path).st_size
        except OSError:
            first_missing = first_missing or path
    available = sizes >= 0
    changed = np.flatnonzero(available & layouts.present & (layouts.file_size != sizes))
    if len(changed):
        logger.info("%d videos changed size since their layouts were stored; they are probed on first use", len(changed))
        layouts = layouts.without(changed)
    missing = len(ids) - unprepared - int(available.sum())
    if len(ids) and not available.any():
        if first_missing is None:
            raise DistinitError(f"{prepared}: none of the {len(ids)} videos of {store.targets_dir} was prepared; "
                                "prepare them, or read the originals")
        raise DistinitError(f"{first_missing}: none of the {len(ids)} videos exist there; if they moved, {MOVED_VIDEOS_HINT}")
    videos = ClipVideos(
        store=store, rows=rows, paths=StringTable(str(every_path.get(video_id, "")) for video_id in ids),
        layouts=layouts, available=available, view_boxes=store.video_view_boxes(),
        missing=missing, unprepared=unprepared,
    )
    if videos.left_out:
        parts = ([f"{missing} missing (e.g. {first_missing})"] if missing else []) + (
            [f"{unprepared} not prepared"] if unprepared else [])
        report = logger.warning if os.environ.get("RANK", "0") == "0" else logger.debug  # once per run, not per rank
        report("%d of %d videos are left out of distillation: %s", videos.left_out, len(ids), ", ".join(parts))
    store.teachers  # read now (shard 0's attributes), so the datasets built on this table need no handle reopened
    store.close()  # the parent's HDF5 handles must not be shared with forked workers
    return videos


def freeze_for_workers() -> None:
    """Call once the datasets are built, before DataLoader workers fork: collect what is garbage now and move every
    surviving object out of the collector's reach (gc.freeze), so the workers' collections never write to the
    parent's objects and copy their pages (measured at 240k videos: 92 -> 55 MiB private per worker after 300
    batches; the Python documentation's advice for fork without exec)."""
    gc.collect()
    gc.freeze()


def table_positions(videos: ClipVideos, video_ids: list[str] | tuple[str, ...], where: Path) -> np.ndarray:
    """The table positions of `video_ids` whose files are available, in the given order; an id without target
    rows is a one-line error."""
    positions = videos.rows.positions()
    unknown = [video_id for video_id in video_ids if video_id not in positions]
    if unknown:
        raise DistinitError(f"{where}: {len(unknown)} videos have no target rows, e.g. {unknown[0]!r}")
    chosen = np.fromiter((positions[video_id] for video_id in video_ids), dtype=np.int64, count=len(video_ids))
    return chosen[videos.available[chosen]]
