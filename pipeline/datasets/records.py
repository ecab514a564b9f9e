"""Video records and the JSONL manifest that every stage reads.

A `VideoRecord` names one video: a stable id, its path, an integer label (or None for unlabeled
sources) and its role in each official split (`{"1": "train", "2": "test", "3": "unused"}`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.errors import DatasetError



@dataclasses.dataclass(frozen=True)
class VideoRecord:
    id: str
    path: Path
    label: int | None = None
    class_name: str | None = None
    splits: dict[str, str] = dataclasses.field(default_factory=dict)

    def role(self, split: str | int) -> str:
        """'train' / 'test' / 'val' / 'unused' in split `split`; 'unused' where the split does not list it."""
        return self.splits.get(str(split), "unused")


@dataclasses.dataclass
class DatasetListing:
    """What an adapter found: records in a stable order, plus listed videos that are not on disk."""

    dataset: str
    root: Path
    records: list[VideoRecord]
    class_names: list[str] = dataclasses.field(default_factory=list)
    missing: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def split(self, split: str | int, role: str) -> list[VideoRecord]:
        return [record for record in self.records if record.role(split) == role]


def relative_path(path: Path, root: Path) -> str:
    """`path` under `root` as named (a video reached through a symbolic link stays under the root),
    else as resolved; a path outside the root is kept absolute so `read_manifest` can still find it."""
    absolute_path, absolute_root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    for candidate, base in ((absolute_path, absolute_root), (path.resolve(), root.resolve())):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    return absolute_path.as_posix()


def record_to_json(record: VideoRecord, root: Path) -> dict[str, Any]:
    """Manifest row. Paths are relative to the root and carry the file size, not its time, so the
    manifest hash changes when content is added, removed or replaced, but not when a file is touched."""
    path = Path(record.path)
    relative = relative_path(path, Path(root))
    return {
        "id": record.id,
        "path": relative,
        "size": os.path.getsize(path) if path.exists() else None,
        "label": record.label,
        "class_name": record.class_name,
        "splits": dict(sorted(record.splits.items())),
    }


def manifest_lines(listing: DatasetListing) -> list[str]:
    return [json.dumps(record_to_json(record, listing.root), sort_keys=True) for record in listing.records]


def manifest_hash(listing: DatasetListing) -> str:
    """sha256 of the manifest's lines: the dataset's content key for later stages."""
    digest = hashlib.sha256()
    for line in manifest_lines(listing):
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def write_manifest(listing: DatasetListing, out: str | os.PathLike) -> str:
    """Write `out` (JSONL, one record a line) and `out.sha256`; return the content hash."""
    lines = manifest_lines(listing)
    text = "".join(line + "\n" for line in lines)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    atomic_write_text(out, text)
    atomic_write_text(f"{out}.sha256", f"{digest}  {Path(out).name}\n")
    return digest


def read_manifest(path: str | os.PathLike, root: str | os.PathLike) -> list[VideoRecord]:
    """Records from a manifest written by `write_manifest`, with paths made absolute under `root`."""
    records = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                records.append(
                    VideoRecord(
                        id=row["id"],
                        path=Path(root) / row["path"],
                        label=row.get("label"),
                        class_name=row.get("class_name"),
                        splits=dict(row.get("splits") or {}),
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                raise DatasetError(f"{path}:{number}: not a manifest row ({error}); re-run `distinit manifest`") from None
    return records


def sorted_records(records: Iterable[VideoRecord]) -> list[VideoRecord]:
    """The stable order every adapter returns: by id."""
    return sorted(records, key=lambda record: record.id)
