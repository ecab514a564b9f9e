"""HMDB-51: `{root}/{class}/{video}.avi` plus `{splits}/{class}_test_split{1,2,3}.txt`.

Each split-file line is `{video}.avi {code}` with code 1 = train, 2 = test, 0 = unused (the official
files carry trailing spaces). Only class folders that have split files are classes; label ids follow
the sorted class names. A video on disk that no split file lists is kept with role "unused".
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

from distinit.pipeline.datasets import register_adapter
from distinit.pipeline.datasets.layout import NameLookup, reject_options, resolve_folder, split_file_lines, video_names
from distinit.pipeline.datasets.records import DatasetListing, VideoRecord, sorted_records
from distinit.pipeline.errors import DatasetError

logger = logging.getLogger(__name__)

SPLIT_FILE_PATTERN = re.compile(r"^(?P<class_name>.+)_test_split(?P<split>[123])\.txt$")
ROLE_BY_CODE = {"0": "unused", "1": "train", "2": "test"}
DEFAULT_SPLIT_FOLDERS = ("testTrainMulti_7030_splits", "../testTrainMulti_7030_splits", "splits", "../splits")


def find_split_files(splits_dir: Path) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """{class: {split: file}} and the split numbers present; every class must have every split."""
    files_by_class: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(splits_dir.iterdir()):
        match = SPLIT_FILE_PATTERN.match(path.name)
        if match and path.is_file():
            files_by_class[match["class_name"]][match["split"]] = path
    if not files_by_class:
        raise DatasetError(
            f"{splits_dir}: no {{class}}_test_split{{1,2,3}}.txt files; pass --splits DIR with the HMDB-51 split files"
        )
    splits = sorted({split for files in files_by_class.values() for split in files})
    for class_name, files in sorted(files_by_class.items()):
        for split in splits:
            if split not in files:
                missing = splits_dir / f"{class_name}_test_split{split}.txt"
                raise DatasetError(f"{missing}: split file missing (other classes have split {split}); restore it")
    return dict(files_by_class), splits


def read_split_file(path: Path, class_folder: Path, videos_on_disk: NameLookup) -> dict[str, str]:
    """{video name on disk: role} from one split file; a listed video must exist in `class_folder`."""
    roles: dict[str, str] = {}
    for number, line in split_file_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ROLE_BY_CODE:
            raise DatasetError(f"{path}:{number}: expected '<video>.avi <0|1|2>', got {line!r}; fix the line")
        listed_name, code = fields
        name = videos_on_disk.find(listed_name)
        if name is None:
            raise DatasetError(
                f"{path}:{number}: video {class_folder / listed_name} not found; restore it or fix --root"
            )
        role = ROLE_BY_CODE[code]
        if roles.get(name, role) != role:
            raise DatasetError(f"{path}:{number}: {listed_name} listed twice with different codes; fix the file")
        roles[name] = role
    return roles


def class_records(
    root: Path, class_name: str, label: int, split_files: dict[str, Path], splits: list[str]
) -> tuple[list[VideoRecord], int]:
    """Records of one class folder and how many of its videos no split file lists."""
    class_folder = root / class_name
    if not class_folder.is_dir():
        first_file = split_files[splits[0]]
        raise DatasetError(f"{class_folder}: class folder not found (listed by {first_file}); restore it or fix --root")
    names_on_disk = video_names(class_folder)
    lookup = NameLookup(names_on_disk)
    roles_by_split = {split: read_split_file(split_files[split], class_folder, lookup) for split in splits}
    records = []
    unlisted = 0
    for name in names_on_disk:
        roles = {split: roles_by_split[split].get(name, "unused") for split in splits}
        if not any(name in roles_by_split[split] for split in splits):
            unlisted += 1
        records.append(
            VideoRecord(
                id=f"{class_name}/{Path(name).stem}",
                path=class_folder / name,
                label=label,
                class_name=class_name,
                splits=roles,
            )
        )
    return records, unlisted


@register_adapter("hmdb51", "HMDB-51: {root}/{class}/{video}.avi + {splits}/{class}_test_split{1,2,3}.txt")
def load(root: Path, *, splits_dir: str | Path | None = None, annotations: str | Path | None = None) -> DatasetListing:
    reject_options("hmdb51", annotations=annotations)
    root = Path(root)
    splits_dir = resolve_folder(
        splits_dir, [root / candidate for candidate in DEFAULT_SPLIT_FOLDERS], "HMDB-51 split", "--splits"
    )
    files_by_class, splits = find_split_files(splits_dir)
    class_names = sorted(files_by_class)
    records: list[VideoRecord] = []
    unlisted_total = 0
    for label, class_name in enumerate(class_names):
        class_list, unlisted = class_records(root, class_name, label, files_by_class[class_name], splits)
        records.extend(class_list)
        unlisted_total += unlisted
    ignored = [
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.name not in files_by_class and not entry.name.startswith(".")
    ]
    logger.info("hmdb51: %d classes, %d videos, splits %s", len(class_names), len(records), ",".join(splits))
    if unlisted_total:
        logger.info("hmdb51: %d videos are in no split file; kept with role 'unused'", unlisted_total)
    if ignored:
        logger.info("hmdb51: %d folders under %s have no split files and are not classes", len(ignored), root)
    return DatasetListing("hmdb51", root, sorted_records(records), class_names=class_names)
