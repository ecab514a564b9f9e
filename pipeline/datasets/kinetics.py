"""Kinetics-400/600/700: annotation CSVs plus downloaded clips.

CSV header `label,youtube_id,time_start,time_end,split[,is_cc]` (test CSVs may lack `label`). A clip is
`{youtube_id}_{time_start:06d}_{time_end:06d}` with extension .mp4, .webm or .mkv, found either at
`{root}/{split}/{label}/` (label as written, or with spaces replaced by `_`) or flat in `{root}/{split}/`; a copy
named by its bare YouTube id (`{youtube_id}.mp4`, as several download tools save it) is found in the same places,
when no file has the full name and no other clip of the CSVs has that YouTube id (it could be either clip's).
Many YouTube clips can no longer be downloaded, so a missing clip is normal: it is recorded in
`listing.missing`, not raised. Labels get ids by sorted name but DistInit never trains on them.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Iterator

from distinit.pipeline.datasets import register_adapter
from distinit.pipeline.datasets.layout import is_hidden, reject_options
from distinit.pipeline.datasets.records import DatasetListing, VideoRecord, sorted_records
from distinit.pipeline.errors import DatasetError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end", "split")
ROLE_BY_SPLIT = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}
# Folder names a split's clips may sit in, after the split value exactly as the CSV writes it.
FOLDERS_BY_ROLE = {"train": ("train",), "val": ("val", "validate", "valid", "validation"), "test": ("test",)}
# Preference order when one clip was saved under more than one container.
CLIP_EXTENSIONS = (".mp4", ".webm", ".mkv")


@dataclasses.dataclass(frozen=True)
class Clip:
    id: str
    label: str | None
    split: str
    role: str
    youtube_id: str = ""


def find_annotation_files(root: Path, annotations: str | Path | None) -> list[Path]:
    if annotations is not None:
        path = Path(annotations)
        if path.is_file():
            return [path]
        files = sorted(path.glob("*.csv")) if path.is_dir() else []
        if not files:
            raise DatasetError(f"{path}: no Kinetics annotation CSV here; pass --annotations FILE.csv or a CSV folder")
        return files
    for folder in (root / "annotations", root / ".." / "annotations", root):
        files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if files:
            logger.info("kinetics: annotations from %s", folder)
            return files
    raise DatasetError(
        f"{root}: no annotation CSVs in {root}/annotations, {root}/../annotations or {root}; pass --annotations PATH"
    )


def parse_time(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DatasetError(f"{where}: time {text!r} is not a whole number of seconds; fix the row")
    return int(value)


def read_annotation_rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """('file:line', row) for each data row; the header must name the required columns."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        try:
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing or len(set(header)) != len(header):
                raise DatasetError(
                    f"{path}:1: header {','.join(header)!r} must be label,youtube_id,time_start,time_end,split[,is_cc]"
                    f" (missing: {','.join(missing) or 'none'}, or a repeated column); fix the header"
                )
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not any(field.strip() for field in row):
                    continue
                if len(row) != len(header):
                    raise DatasetError(f"{where}: expected {len(header)} fields, got {len(row)}; fix the row")
                yield where, {name: field.strip() for name, field in zip(header, row)}
        except (csv.Error, UnicodeDecodeError) as error:
            raise DatasetError(f"{path}:{reader.line_num}: not a CSV row ({error}); fix the file") from None


def parse_clip(where: str, row: dict[str, str]) -> Clip:
    youtube_id = row["youtube_id"]
    if not youtube_id:
        raise DatasetError(f"{where}: empty youtube_id; fix the row")
    role = ROLE_BY_SPLIT.get(row["split"].lower())
    if role is None:
        raise DatasetError(f"{where}: split {row['split']!r} is not train/val/validate/test; fix the row")
    start, end = parse_time(row["time_start"], where), parse_time(row["time_end"], where)
    label = row.get("label") or None
    return Clip(id=f"{youtube_id}_{start:06d}_{end:06d}", label=label, split=row["split"], role=role,
                youtube_id=youtube_id)


class ClipIndex:
    """Clip files under each split folder, indexed once: (split folder, label folder or '', id) -> path."""

    def __init__(self, root: Path):
        self.root = root
        self.by_folder: dict[str, dict[tuple[str, str], Path]] = {}

    def _index(self, split_folder: str) -> dict[tuple[str, str], Path]:
        if split_folder not in self.by_folder:
            index: dict[tuple[str, str], Path] = {}
            top = self.root / split_folder
            if top.is_dir():
                self._add_files(index, top, "")
                for entry in sorted(os.scandir(top), key=lambda entry: entry.name):
                    if entry.is_dir() and not is_hidden(entry.name):
                        self._add_files(index, Path(entry.path), entry.name)
            self.by_folder[split_folder] = index
        return self.by_folder[split_folder]

    @staticmethod
    def _add_files(index: dict[tuple[str, str], Path], folder: Path, location: str) -> None:
        for entry in os.scandir(folder):
            stem, extension = os.path.splitext(entry.name)
            if extension.lower() not in CLIP_EXTENSIONS or is_hidden(entry.name) or not entry.is_file():
                continue
            known = index.get((location, stem))
            rank = CLIP_EXTENSIONS.index(extension.lower())
            if known is None or rank < CLIP_EXTENSIONS.index(known.suffix.lower()):
                index[(location, stem)] = Path(entry.path)

    def find(self, clip: Clip, bare_id: bool = False) -> Path | None:
        """The clip's file by its full name; with `bare_id`, else by its YouTube id alone (`{youtube_id}.mp4`)."""
        split_folders = dict.fromkeys((clip.split, *FOLDERS_BY_ROLE[clip.role]))
        label_folders = dict.fromkeys(([clip.label, clip.label.replace(" ", "_")] if clip.label else []) + [""])
        for stem in (clip.id, clip.youtube_id) if bare_id and clip.youtube_id else (clip.id,):
            for split_folder in split_folders:
                index = self._index(split_folder)
                for label_folder in label_folders:
                    path = index.get((label_folder, stem))
                    if path is not None:
                        return path
        return None


def read_clips(files: list[Path]) -> list[Clip]:
    """Every clip the CSVs list, first listing kept where a clip appears twice."""
    clips: dict[str, Clip] = {}
    conflicts = 0
    for path in files:
        for where, row in read_annotation_rows(path):
            clip = parse_clip(where, row)
            known = clips.setdefault(clip.id, clip)
            if known.role != clip.role:
                conflicts += 1
    if conflicts:
        logger.warning("kinetics: %d clips are listed again under another split; kept their first listing", conflicts)
    return list(clips.values())


@register_adapter("kinetics", "Kinetics-400/600/700: annotation CSVs + {root}/{split}/[{label}/]{id}.mp4")
def load(root: Path, *, splits_dir: str | Path | None = None, annotations: str | Path | None = None) -> DatasetListing:
    reject_options("kinetics", splits_dir=splits_dir)
    root = Path(root)
    clips = read_clips(find_annotation_files(root, annotations))
    class_names = sorted({clip.label for clip in clips if clip.label})
    label_ids = {name: label for label, name in enumerate(class_names)}
    index = ClipIndex(root)
    records, missing = [], []
    clips_per_youtube_id = collections.Counter(clip.youtube_id for clip in clips)
    for clip in clips:
        path = index.find(clip, bare_id=clips_per_youtube_id[clip.youtube_id] == 1)
        if path is None:
            where = f"{clip.split}/{clip.label}/ or {clip.split}/" if clip.label else f"{clip.split}/"
            missing.append({"id": clip.id, "reason": f"no {clip.id}{{{','.join(CLIP_EXTENSIONS)}}} under {where}"})
            continue
        label = label_ids[clip.label] if clip.label else None
        records.append(VideoRecord(clip.id, path, label=label, class_name=clip.label, splits={"1": clip.role}))
    missing.sort(key=lambda item: item["id"])
    logger.info("kinetics: %d clips listed, %d found, %d missing", len(clips), len(records), len(missing))
    return DatasetListing("kinetics", root, sorted_records(records), class_names=class_names, missing=missing)
