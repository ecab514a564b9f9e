"""Each extracted video's probed layout, stored by stage one so stage two and eval need not probe it again.

Stage one probes every video it decodes. Each shard keeps the layouts of its videos in one dataset,
`video_layouts`: UTF-8 JSON lines `{"id": video id, "layout": pipeline.video.layout_record record}`,
as uint8 bytes (fletcher32-checksummed like the rows, gzip-compressed). Finalize concatenates the shards'
lines, in shard order, into `layouts.jsonl` beside them, and lists it in the manifest with its sha256:

    manifest["layouts"] = {"file": "layouts.jsonl", "sha256": ..., "videos": N, "bytes": B}

Stage two reads them with `stored_layouts(targets_dir)` -> {video id: record} and calls
`layout_from_record(path, record)`, which returns None (probe again) for a file whose size changed since
(the record holds no mtime, so shard bytes never depend on when the videos were copied). A folder written before layouts were stored has neither dataset nor file nor manifest entry:
`stored_layouts` returns {} and every video is probed as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from distinit.pipeline.atomic import atomic_path
from distinit.pipeline.hashing import canonical_json, json_lines
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header
from distinit.pipeline.shards.format import ShardError

logger = logging.getLogger(__name__)

LAYOUTS_NAME = "layouts.jsonl"
REWRITE_HINT = "run `distinit extract --finalize` on this folder to rewrite it from the shards"


def layout_line(video_id: str, record: dict[str, Any]) -> bytes:
    """One line of the shard dataset and of layouts.jsonl, keys sorted so equal layouts give equal bytes."""
    return (canonical_json({"id": str(video_id), "layout": record}) + "\n").encode("utf-8")


def parse_layout_lines(data: bytes, where: str) -> dict[str, dict[str, Any]]:
    """{video id: layout record} from JSON lines; a line that is not one is a ValueError naming `where`."""
    entries = json_lines(data)
    if entries is not None:  # the common case, parsed at C speed (240k lines: ~1 s, not ~4)
        layouts = {entry["id"]: entry["layout"] for entry in entries
                   if isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("layout"), dict)}
        if len(layouts) == len(entries):
            return layouts
    layouts = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
            video_id, record = entry["id"], entry["layout"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{where}: line {number} is not a layout line") from None
        if not isinstance(video_id, str) or not isinstance(record, dict):
            raise ValueError(f"{where}: line {number} is not a layout line")
        if video_id in layouts:
            raise ValueError(f"{where}: video {video_id!r} has two layout lines")
        layouts[video_id] = record
    return layouts


def write_layout_dataset(shard: h5py.File, data: bytes) -> None:
    """Store a shard's layout lines (non-empty, in the order its videos were added) as its `video_layouts`."""
    array = np.frombuffer(data, dtype=np.uint8)
    shard.create_dataset(
        fmt.VIDEO_LAYOUTS, data=array, maxshape=(None,), chunks=(min(len(array), fmt.LAYOUT_CHUNK_BYTES),),
        compression="gzip", compression_opts=fmt.COMPRESSION_LEVEL, fletcher32=True, track_times=False,
    )


def shard_layout_bytes(shard: h5py.File) -> bytes | None:
    """The shard's layout lines as stored; None for a shard written before layouts were stored."""
    if fmt.VIDEO_LAYOUTS not in shard:
        return None
    return shard[fmt.VIDEO_LAYOUTS][:].tobytes()


def shard_layout_problems(path: Path, shard: h5py.File) -> list[str]:
    """What is wrong with the shard's layout dataset (unreadable, checksum, not JSON lines); [] when absent."""
    try:
        data = shard_layout_bytes(shard)
        if data is not None:
            parse_layout_lines(data, f"{path}: {fmt.VIDEO_LAYOUTS}")
    except ValueError as error:
        return [str(error)]
    except (OSError, RuntimeError, UnicodeDecodeError) as error:
        return [f"{path}: {fmt.VIDEO_LAYOUTS} unreadable, checksum or decompression failed ({error})"]
    return []


def write_layouts_file(targets_dir: Path, shard_paths: Iterable[Path]) -> dict[str, Any] | None:
    """Concatenate the shards' layout lines into `layouts.jsonl` (atomically); its manifest entry, or None
    (and no file, not even one an earlier finalize left) when no shard stores layouts."""
    target = Path(targets_dir) / LAYOUTS_NAME
    digest, videos, size, found = hashlib.sha256(), 0, 0, False
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as stream:
            for path in shard_paths:
                with header.open_read_only(path) as shard:
                    data = shard_layout_bytes(shard)
                if data is None:
                    continue
                found = True
                stream.write(data)
                digest.update(data)
                videos += data.count(b"\n")
                size += len(data)
            stream.flush()
            os.fsync(stream.fileno())
    if not found:
        target.unlink()
        return None
    return {"file": LAYOUTS_NAME, "sha256": digest.hexdigest(), "videos": videos, "bytes": size}


def stored_layouts(targets_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{video id: layout record} stage one stored for this targets folder; {} for a folder written before
    layouts were stored. A layouts file that differs from its manifest entry is a one-line ShardError."""
    from distinit.pipeline.shards.manifest import read_manifest  # manifest.py imports this module

    targets_dir = Path(targets_dir)
    entry = read_manifest(targets_dir).get("layouts")
    if not entry:
        return {}
    path = targets_dir / LAYOUTS_NAME
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ShardError(f"{path}: cannot read the stored layouts ({error.strerror}); {REWRITE_HINT}") from None
    problem = _digest_problem(path, data, entry)
    if problem is not None:
        raise ShardError(f"{problem}; {REWRITE_HINT}")
    try:
        return parse_layout_lines(data, str(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise ShardError(f"{error}; {REWRITE_HINT}") from None


def _digest_problem(path: Path, data: bytes, entry: dict[str, Any]) -> str | None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        expected = str(entry.get("sha256"))[:12]
        return f"{path}: sha256 {digest[:12]}… differs from the manifest's {expected}… (file changed or corrupt)"
    return None


def layouts_problems(targets_dir: Path, entry: dict[str, Any] | None, video_ids: set[str] | None) -> list[str]:
    """For `verify`: the layouts file against its manifest entry (sha256, lines, count, videos of the shards)."""
    path = Path(targets_dir) / LAYOUTS_NAME
    if not entry:
        return [f"{path}: not in the manifest; delete it or {REWRITE_HINT}"] if path.exists() else []
    try:
        data = path.read_bytes()
    except OSError as error:
        return [f"{path}: listed in the manifest but cannot be read ({error.strerror}); {REWRITE_HINT}"]
    problem = _digest_problem(path, data, entry)
    if problem is not None:
        return [problem]
    try:
        layouts = parse_layout_lines(data, str(path))
    except (ValueError, UnicodeDecodeError) as error:
        return [str(error)]
    problems = []
    if len(layouts) != entry.get("videos"):
        problems.append(f"{path}: {len(layouts)} layouts, the manifest says {entry.get('videos')}")
    strangers = sorted(set(layouts) - video_ids) if video_ids is not None else []
    if strangers:
        problems.append(f"{path}: layouts of {len(strangers)} videos with no rows in the shards: {strangers[:5]}")
    return problems
