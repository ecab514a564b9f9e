"""Check a target cache end to end: manifest, file hashes, HDF5 checksums, row counts, finite values, teachers'
view boxes inside the frame, stored video layouts, stray files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header
from distinit.pipeline.shards.format import ShardError
from distinit.pipeline.shards.layouts import layouts_problems, shard_layout_problems
from distinit.pipeline.shards.video_index import video_index_problems
from distinit.pipeline.shards.manifest import read_manifest

logger = logging.getLogger(__name__)

# Rows read at once while checking; bounds memory on big shards (ImageNet logits are 2 kB a row).
VERIFY_BLOCK_ROWS = 4096
# What h5py raises on damaged bytes depends on where they are: OSError for the superblock or a chunk,
# KeyError for an object header that fails its checksum (found by flipping bytes: tests/reliability).
UNREADABLE_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


def verify(targets_dir: str | os.PathLike) -> list[str]:
    """Every problem found in the cache, one line each naming the file; an empty list means clean."""
    targets_dir = Path(targets_dir)
    try:
        manifest = read_manifest(targets_dir)
    except ShardError as error:
        return [str(error)]
    problems: list[str] = []
    listed = {entry["file"] for entry in manifest["shards"]}
    manifest_file = targets_dir / fmt.MANIFEST_NAME
    if len(manifest["shards"]) != manifest["shard_count"]:
        problems.append(f"{manifest_file}: lists {len(manifest['shards'])} shards, says shard_count {manifest['shard_count']}")
    video_shards: dict[str, str] = {}
    for entry in manifest["shards"]:
        problems.extend(_verify_listed_shard(targets_dir / entry["file"], entry, manifest, video_shards))
    total_rows = sum(int(entry["rows"]) for entry in manifest["shards"])
    if total_rows != manifest["total_rows"]:
        problems.append(f"{manifest_file}: total_rows {manifest['total_rows']} but the shards list {total_rows}")
    problems.extend(layouts_problems(targets_dir, manifest.get("layouts"), set(video_shards)))
    problems.extend(video_index_problems(targets_dir, manifest.get("video_index")))
    for path in sorted(targets_dir.iterdir()):
        if fmt.parse_shard_name(path.name) is not None and path.name not in listed:
            problems.append(f"{path}: stray shard, not in the manifest; delete it or rerun `distinit extract --finalize`")
        elif path.name.endswith(".tmp"):
            problems.append(f"{path}: leftover temporary file from an interrupted write; delete it")
    return problems


# Beside manifest.json once a verify found nothing: each sealed file's size and modification time at that moment, so a
# later start (every distill rank, every resume) knows in a few stat calls that nothing changed since.
VERIFIED_NAME = "verified.json"


def _file_states(targets_dir: Path, manifest: dict[str, Any]) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} of the manifest, every shard it lists and the files beside them that stage two
    reads (layouts, video index); a missing file is left out."""
    states = {}
    beside = [manifest[key]["file"] for key in ("layouts", "video_index") if manifest.get(key)]
    for name in [fmt.MANIFEST_NAME, *(entry["file"] for entry in manifest["shards"]), *beside]:
        try:
            stat = (targets_dir / name).stat()
        except OSError:
            continue
        states[name] = [stat.st_size, stat.st_mtime_ns]
    return states


def record_verified(targets_dir: str | os.PathLike) -> bool:
    """Write VERIFIED_NAME for a folder `verify` just found clean; False (logged) when the folder is read-only."""
    from distinit.pipeline.atomic import atomic_write_text
    from distinit.pipeline.errors import OutputError

    targets_dir = Path(targets_dir)
    states = _file_states(targets_dir, read_manifest(targets_dir))
    try:
        atomic_write_text(targets_dir / VERIFIED_NAME, json.dumps({"files": states}, indent=1, sort_keys=True) + "\n")
    except OutputError as error:
        logger.info("not recording the verification: %s", error)
        return False
    return True


def verified_unchanged(targets_dir: str | os.PathLike) -> bool:
    """Whether a clean verify was recorded and no sealed file changed size or modification time since."""
    targets_dir = Path(targets_dir)
    try:
        recorded = json.loads((targets_dir / VERIFIED_NAME).read_text())["files"]
        manifest = read_manifest(targets_dir)
    except (OSError, ValueError, KeyError, TypeError, ShardError):
        return False
    return recorded == _file_states(targets_dir, manifest)


def verify_shard(
    path: str | os.PathLike, *, stage_key: str | None = None, output_keys: list[str] | None = None
) -> list[str]:
    """Check one finished shard on its own (no manifest needed), e.g. before a resumed run skips it.

    Opens it, reads every dataset in full (fletcher32 checksums), looks for NaN/inf, and compares its
    stage key and outputs with `stage_key` / `output_keys` when given.
    """
    problems, _, _ = _check_shard_file(Path(path), stage_key, output_keys)
    return problems


def _verify_listed_shard(
    path: Path, entry: dict[str, Any], manifest: dict[str, Any], video_shards: dict[str, str]
) -> list[str]:
    if not path.is_file():
        return [f"{path}: shard listed in the manifest is missing"]
    problems = []
    digest = sha256_file(path)
    intact = digest == entry.get("sha256")
    if not intact:
        expected = str(entry.get("sha256"))[:12]
        problems.append(f"{path}: sha256 {digest[:12]}… differs from the manifest's {expected}… (file changed or corrupt)")
    found, rows, shard_videos = _check_shard_file(
        path, manifest["stage_key"], header.output_keys(manifest["teachers"]), read_attributes=intact
    )
    problems.extend(found)
    if rows is not None and rows != int(entry["rows"]):
        problems.append(f"{path}: {rows} rows, the manifest says {entry['rows']}")
    if shard_videos is not None:
        if len(shard_videos) != int(entry.get("videos", -1)):
            problems.append(f"{path}: {len(shard_videos)} videos, the manifest says {entry.get('videos')}")
        problems.extend(_check_video_owners(path, shard_videos, video_shards))
    return problems


def _check_shard_file(
    path: Path, stage_key: str | None, output_keys: list[str] | None, read_attributes: bool = True
) -> tuple[list[str], int | None, set[str] | None]:
    """(problems, row count, video ids) of one shard file; the counts are None when they could not be read.

    read_attributes=False (needs `output_keys`) checks only the datasets, for a file known to be damaged:
    the attributes are variable-length strings in HDF5's global heap, which no checksum covers, and one
    flipped bit there made reading an attribute loop forever (found by flipping bytes, tests/reliability).
    Datasets are fixed-size, with checksummed headers and chunks (fletcher32)."""
    if not path.is_file():
        return [f"{path}: shard missing"], None, None
    try:
        with header.open_read_only(path) as shard:
            if not read_attributes:
                return _check_datasets(path, shard, list(output_keys or []))
            return _check_contents(path, shard, stage_key, output_keys)
    except UNREADABLE_ERRORS as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return [f"{path}: HDF5 cannot read it ({reason}); delete it and rerun extract for this shard"], None, None


def _check_contents(
    path: Path, shard: h5py.File, stage_key: str | None, output_keys: list[str] | None
) -> tuple[list[str], int | None, set[str] | None]:
    try:
        attributes = header.file_attributes(shard)
        own_output_keys = header.output_keys(header.teachers(shard))
    except (KeyError, ValueError, OSError) as error:
        return [f"{path}: shard attributes unreadable ({error})"], None, None
    problems = []
    if attributes["format_version"] != fmt.FORMAT_VERSION:
        problems.append(fmt.format_mismatch(path, attributes["format_version"], attributes["dataset"]))
    if fmt.parse_shard_name(path.name) != (attributes["shard_index"], attributes["shard_count"]):
        said = f"{attributes['shard_index']} of {attributes['shard_count']}"
        problems.append(f"{path}: attributes say shard {said}, the file name disagrees")
    if stage_key is not None and attributes["stage_key"] != stage_key:
        problems.append(f"{path}: stage key {attributes['stage_key']} differs from the expected {stage_key}")
    output_keys = own_output_keys if output_keys is None else output_keys
    if own_output_keys != output_keys:
        problems.append(f"{path}: teacher outputs {own_output_keys} differ from the expected {output_keys}")
    found, rows, shard_videos = _check_datasets(path, shard, output_keys)
    return problems + found, rows, shard_videos


def _check_datasets(
    path: Path, shard: h5py.File, output_keys: list[str]
) -> tuple[list[str], int | None, set[str] | None]:
    """Every row, output and view box dataset present, of one length, readable in full, finite; boxes inside the frame."""
    problems = []
    names = [*fmt.ROW_COLUMNS, *output_keys, *view_box_keys(output_keys)]
    absent = [name for name in names if name not in shard]
    if absent:
        problems.append(f"{path}: datasets {absent} missing")
    present = [name for name in names if name in shard]
    lengths = {name: int(shard[name].shape[0]) for name in present}
    if len(set(lengths.values())) > 1:
        problems.append(f"{path}: datasets disagree on the row count {lengths}")
    shard_videos: set[str] = set()
    for name in present:
        problems.extend(_verify_dataset(path, shard[name], name, shard_videos))
    problems.extend(shard_layout_problems(path, shard))
    return problems, lengths.get(fmt.T_SECONDS), shard_videos if fmt.VIDEO_ID in present else None


def view_box_keys(output_keys: list[str]) -> list[str]:
    """`<teacher>/view_box` of every teacher with an output among `output_keys`, in their order."""
    teachers = dict.fromkeys(key.split("/", 1)[0] for key in output_keys)
    return [fmt.view_box_key(teacher) for teacher in teachers]


def _verify_dataset(path: Path, dataset: h5py.Dataset, name: str, shard_videos: set[str]) -> list[str]:
    """Read the whole dataset (h5py raises on a fletcher32 mismatch) and look for non-finite floats."""
    problems = []
    non_finite_rows = 0
    for start in range(0, int(dataset.shape[0]), VERIFY_BLOCK_ROWS):
        try:
            block = dataset[start : start + VERIFY_BLOCK_ROWS]
        except (OSError, ValueError, RuntimeError) as error:
            problems.append(f"{path}: {name} rows {start}.. unreadable, checksum or decompression failed ({error})")
            continue
        if block.dtype.kind == "f":
            non_finite_rows += int((~np.isfinite(block.reshape(len(block), -1))).any(axis=1).sum())
        if name.endswith("/" + fmt.VIEW_BOX) and len(block):
            problem = fmt.view_box_problem(block)
            if problem is not None:
                problems.append(f"{path}: {name} rows {start}..: {problem}; delete the shard and rerun extract for it")
        elif name == fmt.VIDEO_ID:
            shard_videos.update(header.decode_video_ids(block))
    if non_finite_rows:
        problems.append(f"{path}: {name} has NaN/inf in {non_finite_rows} rows")
    return problems


def _check_video_owners(path: Path, shard_videos: set[str], video_shards: dict[str, str]) -> list[str]:
    """Each video lives in one shard (its partition); rows of one video in two shards mean mixed runs."""
    shared = []
    for video_id in sorted(shard_videos):
        owner = video_shards.setdefault(video_id, path.name)
        if owner != path.name:
            shared.append(f"{video_id!r} (also in {owner})")
    return [f"{path}: {len(shared)} videos also have rows in another shard: {', '.join(shared[:5])}"] if shared else []
