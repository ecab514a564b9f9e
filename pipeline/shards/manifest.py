"""`manifest.json`: the one file saying which shards make a complete target cache, and what went into it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence


from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards import header
from distinit.pipeline.shards.checksum import recorded_checksum
from distinit.pipeline.shards.format import ShardError
from distinit.pipeline.shards.layouts import LAYOUTS_NAME, parse_layout_lines, write_layouts_file
from distinit.pipeline.shards.video_index import build_video_index, write_video_index

logger = logging.getLogger(__name__)

MANIFEST_KEYS = ("format_version", "stage_key", "shard_count", "shards", "total_rows", "teachers")
FINALIZE_HINT = "run `distinit extract --finalize` on this folder once every shard exists"


def manifest_path(targets_dir: str | os.PathLike) -> Path:
    return Path(targets_dir) / fmt.MANIFEST_NAME


def shard_files(targets_dir: str | os.PathLike) -> list[Path]:
    """The finished shard files in a folder (temp files and `.sha256` files excluded), sorted by name, for `--finalize`."""
    folder = Path(targets_dir)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if fmt.parse_shard_name(path.name) is not None)


def _check_complete(targets_dir: Path, shards: Sequence[Path]) -> list[tuple[int, Path]]:
    """Shards sorted by index; refuse when the set is not exactly shard 0..N-1 of one N."""
    indexed = []
    for shard in shards:
        parsed = fmt.parse_shard_name(Path(shard).name)
        if parsed is None:
            raise ShardError(f"{shard}: not a shard file name (expected shard-00000-of-00016.h5)")
        indexed.append((parsed, Path(shard)))
    if not indexed:
        raise ShardError(f"{targets_dir}: no shard files to finalize; run `distinit extract` first")
    counts = {count for (_, count), _ in indexed}
    if len(counts) != 1:
        raise ShardError(
            f"{targets_dir}: shards disagree on the shard count {sorted(counts)}; remove the stale ones and rerun extract"
        )
    count = counts.pop()
    present = sorted(index for (index, _), _ in indexed)
    if present != list(range(count)):
        missing = sorted(set(range(count)) - set(present))
        raise ShardError(
            f"{targets_dir}: shards {missing[:10]} of {count} missing (or listed twice); "
            f"run `distinit extract --shard i/{count}` for them, then finalize"
        )
    return [(index, path) for (index, _), path in sorted(indexed)]


def _summarise_shard(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ShardError(f"{path}: shard missing; run `distinit extract` for it, then finalize")
    digest = sha256_file(path)
    recorded = recorded_checksum(path)
    # Checked before HDF5 opens it: a damaged attribute heap can hang the reader. Shards of an older
    # distinit have no recorded sha256 and are read as before.
    if recorded is not None and recorded != digest:
        raise ShardError(
            f"{path}: sha256 {digest[:12]}… differs from the {recorded[:12]}… recorded when it was written "
            "(changed or damaged); delete it and rerun `distinit extract` for it"
        )
    try:
        with header.open_read_only(path) as shard:
            attributes = header.file_attributes(shard)
            video_ids = set(header.decode_video_ids(shard[fmt.VIDEO_ID][:]))
            summary = {
                "attributes": attributes,
                "teachers": header.teachers(shard),
                "rows": header.row_count(shard),
                "videos": len(video_ids),
            }
    except (OSError, KeyError, ValueError) as error:
        raise ShardError(f"{path}: unreadable shard ({error}); delete it and rerun `distinit extract` for it") from None
    summary["sha256"] = digest
    summary["bytes"] = path.stat().st_size
    return summary


def _check_consistent(ordered: list[tuple[int, Path]], summaries: list[dict[str, Any]]) -> None:
    """Every shard must come from the same run configuration as shard 0."""
    first = summaries[0]
    for (index, path), summary in zip(ordered, summaries):
        attributes = summary["attributes"]
        if attributes["format_version"] != fmt.FORMAT_VERSION:  # a shard left from an older distinit
            raise ShardError(fmt.format_mismatch(path, attributes["format_version"], attributes["dataset"]))
        for key in ("stage_key", "dataset", "code_version", "sampling", "shard_count"):
            if attributes[key] != first["attributes"][key]:
                raise ShardError(
                    f"{path}: {key} {attributes[key]!r} differs from shard 0's {first['attributes'][key]!r}; rerun extract for it"
                )
        if attributes["shard_index"] != index:
            raise ShardError(
                f"{path}: says it is shard {attributes['shard_index']}, named as shard {index}; rerun extract for it"
            )
        if summary["teachers"] != first["teachers"]:
            raise ShardError(f"{path}: its teachers differ from shard 0's; rerun extract for it")


def write_manifest(
    targets_dir: str | os.PathLike,
    *,
    config: dict[str, Any],
    shards: Sequence[str | os.PathLike],
    skipped: Sequence[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `<targets_dir>/manifest.json` (atomically) from the finished shards; returns its path.

    `skipped` lists {video_id, path, reason}; None gathers what each shard's writer recorded via
    `add_skipped`. Stage key, dataset, code version, sampling and teachers are read from the shards,
    which must all agree and be exactly shards 0..N-1 of one N. The shards' video layouts are gathered into
    `layouts.jsonl`, listed as `layouts` (pipeline.shards.layouts), and what stage two reads at start into
    `video_index.h5`, listed as `video_index` (pipeline.shards.video_index).
    """
    targets_dir = Path(targets_dir)
    ordered = _check_complete(targets_dir, [Path(shard) for shard in shards])
    summaries = [_summarise_shard(path) for _, path in ordered]
    _check_consistent(ordered, summaries)
    first = summaries[0]
    if skipped is None:
        skipped = [entry for summary in summaries for entry in summary["attributes"]["skipped"]]
    skipped = [
        {"video_id": str(entry["video_id"]), "path": str(entry.get("path", "")), "reason": str(entry["reason"])}
        for entry in skipped
    ]
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "stage_key": first["attributes"]["stage_key"],
        "dataset": first["attributes"]["dataset"],
        "code_version": first["attributes"]["code_version"],
        "sampling": first["attributes"]["sampling"],
        "config": config,
        "teachers": first["teachers"],
        "output_keys": header.output_keys(first["teachers"]),
        "shard_count": len(ordered),
        "shards": [
            {"file": path.name, "index": index, **{key: summary[key] for key in ("sha256", "rows", "videos", "bytes")}}
            for (index, path), summary in zip(ordered, summaries)
        ],
        "total_rows": sum(summary["rows"] for summary in summaries),
        "total_videos": sum(summary["videos"] for summary in summaries),
        "skipped_count": len(skipped),
        "skipped": skipped,
        "extra": extra or {},
    }
    # Written before the manifest, which seals the folder; absent for shards written before layouts were stored.
    layouts = write_layouts_file(targets_dir, [path for _, path in ordered])
    if layouts is not None:
        manifest["layouts"] = layouts
    # What stage two reads at every start, packed once here (pipeline.shards.video_index).
    records = parse_layout_lines((targets_dir / LAYOUTS_NAME).read_bytes(), LAYOUTS_NAME) if layouts else {}
    index = build_video_index([path for _, path in ordered], records)
    manifest["video_index"] = write_video_index(targets_dir, index)
    target = manifest_path(targets_dir)
    atomic_write_text(target, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("wrote %s: %d shards, %d rows, %d skipped videos", target, len(ordered), manifest["total_rows"], len(skipped))
    return target


def read_manifest(targets_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest; a missing, unparsable or incomplete one is a one-line ShardError."""
    path = manifest_path(targets_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardError(f"{path}: no manifest here; {FINALIZE_HINT}") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot read the manifest ({error.strerror}); check the file's permissions") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise ShardError(
            f"{path}: corrupt manifest ({error.msg} at line {error.lineno}); {FINALIZE_HINT} to rewrite it"
        ) from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: the manifest is not a JSON object; {FINALIZE_HINT} to rewrite it")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ShardError(f"{path}: manifest lacks {missing}; {FINALIZE_HINT} to rewrite it")
    if manifest["format_version"] != fmt.FORMAT_VERSION:
        raise ShardError(fmt.format_mismatch(Path(targets_dir), manifest["format_version"], manifest.get("dataset")))
    return manifest
