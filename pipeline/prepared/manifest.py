"""What a prepared-videos folder records, and how stage two reads it.

    <out>/<data>/<key>/videos/<source's path under the root, as .mp4>        the prepared copy
                       videos/<...>.mp4.json                                 its row (below), written after it
                       videos.jsonl                                          every row, by id (written by `seal`)
                       manifest.json, config.yaml, provenance.json           the seal (totals, options, skips)
    <out>/<data>/latest                                                      the last sealed key

A row is the verdict on one video: prepared ({id, path, source, source_size, sha256, bytes, seconds,
frame_count, layout}) or skipped ({id, path, source, source_size, skipped: reason}). `path` is relative to
the videos folder, `source` to the dataset root, `layout` is `layout_record` of the copy. A row is written
(atomically) only once its copy is in place, so a copy without a row is unfinished; a copy whose sha256
differs from its row's was changed or damaged. Either is redone by the next run (`finished_row`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from distinit.pipeline.atomic import atomic_write_text, replace_shared_text
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import json_lines
from distinit.pipeline.shards.checksum import checksum_problem

logger = logging.getLogger(__name__)

VIDEOS_FOLDER = "videos"
VIDEOS_MANIFEST = "videos.jsonl"
MANIFEST_NAME = "manifest.json"
ROW_SUFFIX = ".json"
PREPARED_FIELDS = ("id", "path", "source", "source_size", "sha256", "bytes", "seconds", "frame_count", "layout")
SKIPPED_FIELDS = ("id", "path", "source", "source_size", "skipped")


def row_path(target: Path) -> Path:
    return target.with_name(target.name + ROW_SUFFIX)


def write_row(target: Path, row: dict[str, Any]) -> None:
    atomic_write_text(row_path(target), json.dumps(row, sort_keys=True) + "\n")


def read_row(target: Path) -> dict[str, Any] | None:
    """The row beside `target`; None when there is none or it is not a complete row."""
    try:
        row = json.loads(row_path(target).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(row, dict):
        return None
    fields = SKIPPED_FIELDS if "skipped" in row else PREPARED_FIELDS
    return row if all(field in row for field in fields) else None


def finished_row(target: Path) -> dict[str, Any] | None:
    """The row of a video a re-run can keep: a skip, or a copy whose bytes match the sha256 in its row. Anything
    else (no row, a damaged row, a copy that is missing or changed) is removed and None returned: redo it."""
    row = read_row(target)
    problem = "unfinished (no row beside it)" if row is None else None
    if row is not None and "skipped" not in row:
        problem = "missing" if not target.is_file() else checksum_problem(target, row.get("sha256"))
    if problem is None:
        return row
    if target.exists() or row_path(target).exists():
        logger.warning("redoing %s: %s", target, problem)
    target.unlink(missing_ok=True)
    row_path(target).unlink(missing_ok=True)
    return None


def seal(folder: Path, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> Path:
    """Write videos.jsonl (the prepared rows, in the order given) and manifest.json (`manifest` plus totals and
    the skipped videos); returns manifest.json's path. Each write is atomic; manifest.json comes last."""
    prepared = [row for row in rows if "skipped" not in row]
    skipped = [{"id": row["id"], "source": row["source"], "reason": row["skipped"]} for row in rows if "skipped" in row]
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in prepared)
    atomic_write_text(folder / VIDEOS_MANIFEST, text)
    total_bytes = sum(row["bytes"] for row in prepared)
    source_bytes = sum(row["source_size"] for row in prepared)
    seconds = sum(row["seconds"] for row in prepared)
    record = {
        **manifest,
        "videos_manifest": VIDEOS_MANIFEST,
        "totals": {"videos": len(rows), "prepared": len(prepared), "skipped": len(skipped), "bytes": total_bytes,
                   "source_bytes": source_bytes, "seconds": seconds},
        "bytes_per_video_second": total_bytes / seconds if seconds else None,
        "source_bytes_per_video_second": source_bytes / seconds if seconds else None,
        "skipped": skipped,
    }
    path = folder / MANIFEST_NAME
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def write_latest(folder: Path) -> None:
    """`<out>/<data>/latest` names `folder`; every preparation of the dataset may write it at once."""
    replace_shared_text(folder.parent / "latest", folder.name + "\n")


def sealed_folder(folder: str | os.PathLike) -> Path:
    """`folder` if it is a sealed prepared folder, or the one its `latest` names (for `<out>/<data>`)."""
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file() and (folder / "latest").is_file():
        folder = folder / (folder / "latest").read_text(encoding="utf-8").strip()
    if not (folder / MANIFEST_NAME).is_file():
        raise DistinitError(
            f"{folder}: not a finished prepared-videos folder (no {MANIFEST_NAME}); run `distinit prepare` to the "
            "end (after --shard parts: once more with --finalize), or pass <out>/<data>/<key>"
        )
    return folder


def prepared_videos(folder: str | os.PathLike, short_side: int | None = None,
                    sources: dict[str, int | None] | None = None) -> dict[str, tuple[Path, dict[str, Any]]]:
    """{video id: (absolute path of its prepared copy, its layout record)} of a sealed folder (`<out>/<data>/<key>`,
    or `<out>/<data>` for its `latest`). Skipped videos are absent. Read a clip without probing with
    `layout_from_record(path, record)` (None if the file changed since: probe it then).

    A reader that decodes at `short_side` must get copies made at it (else a copy is resampled twice and its
    frames come out a pixel off in width: other crop boxes); `sources` ({id: the size of the video it stands for})
    refuses copies of other files than the reader's."""
    return {video_id: (Path(path), record) for video_id, (path, record) in
            prepared_files(folder, short_side=short_side, sources=sources).items()}


def prepared_files(folder: str | os.PathLike, short_side: int | None = None,
                   sources: dict[str, int | None] | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """`prepared_videos` with the paths as strings: at Kinetics size a Path per video costs seconds per start."""
    folder = sealed_folder(folder).resolve()
    if short_side is not None:
        prepared_side = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["options"]["short_side"]
        if prepared_side != short_side:
            raise DistinitError(f"{folder}: prepared at short side {prepared_side}, but clips are read at {short_side}; "
                                f"prepare again with --short-side {short_side}, or read the originals")
    videos: dict[str, tuple[str, dict[str, Any]]] = {}
    manifest_file = folder / VIDEOS_MANIFEST
    try:
        lines = manifest_file.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DistinitError(f"{manifest_file}: cannot read ({error.strerror}); prepare the videos again") from None
    base = os.path.join(folder, VIDEOS_FOLDER)
    parsed = json_lines("\n".join(lines))  # in one call; line by line where that fails (or a line is blank)
    rows = parsed if parsed is not None and len(parsed) == len(lines) else [None] * len(lines)
    for number, (line, row) in enumerate(zip(lines, rows), start=1):
        try:
            row = json.loads(line) if row is None else row
            videos[row["id"]] = (os.path.join(base, row["path"]), row["layout"])
            source_size = row["source_size"]
        except (ValueError, KeyError, TypeError):
            raise DistinitError(f"{manifest_file}:{number}: not a prepared-video row; prepare the videos again") from None
        if sources is not None and row["id"] in sources and sources[row["id"]] not in (None, source_size):
            raise DistinitError(f"{manifest_file}:{number}: {row['id']} was prepared from a file of {source_size} bytes, "
                                f"not the {sources[row['id']]} of the video read here; prepare these videos again")
    return videos
