"""UCF-101: `{root}/{Class}/v_{Class}_gXX_cYY.avi` plus the `ucfTrainTestlist` folder.

`classInd.txt` lines are `{id} {Class}` with 1-based ids (label = id - 1, in the file's order);
`trainlist0{k}.txt` lines are `{Class}/{video}.avi {id}`, `testlist0{k}.txt` lines `{Class}/{video}.avi`.
The official files have CRLF endings. Class folders and file names are matched exactly first and
then ignoring case: the real release spells one class `HandstandPushups` in classInd.txt and its folder
but `v_HandStandPushups_...` in its video names, and mirrors differ in which spelling the lists use.
Record ids are the video file stems as found on disk.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from distinit.pipeline.datasets import register_adapter
from distinit.pipeline.datasets.layout import (
    NameLookup,
    reject_options,
    require_unique_ids,
    resolve_folder,
    split_file_lines,
    video_names,
)
from distinit.pipeline.datasets.records import DatasetListing, VideoRecord, sorted_records
from distinit.pipeline.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_FOLDERS = ("ucfTrainTestlist", "../ucfTrainTestlist")
SPLITS = ("1", "2", "3")


def read_class_index(splits_dir: Path) -> list[str]:
    """Class names indexed by label (classInd id - 1)."""
    path = splits_dir / "classInd.txt"
    if not path.is_file():
        raise DatasetError(f"{path}: classInd.txt not found; pass --splits DIR with the ucfTrainTestlist files")
    names_by_id: dict[int, str] = {}
    folded_names: set[str] = set()
    for number, line in split_file_lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
            raise DatasetError(f"{path}:{number}: expected '<id> <ClassName>' with id >= 1, got {line!r}; fix the line")
        class_id, name = int(fields[0]), fields[1]
        if class_id in names_by_id or name.casefold() in folded_names:
            raise DatasetError(f"{path}:{number}: class id {class_id} or name {name} appears twice; fix the file")
        names_by_id[class_id] = name
        folded_names.add(name.casefold())
    if sorted(names_by_id) != list(range(1, len(names_by_id) + 1)):
        raise DatasetError(f"{path}: class ids must run 1..{len(names_by_id)} without gaps; fix the file")
    return [names_by_id[class_id] for class_id in sorted(names_by_id)]


def find_split_lists(splits_dir: Path) -> dict[str, tuple[Path, Path]]:
    """{split: (trainlist, testlist)} for each split whose lists exist; both lists or neither."""
    lists = {}
    for split in SPLITS:
        train_list, test_list = splits_dir / f"trainlist0{split}.txt", splits_dir / f"testlist0{split}.txt"
        if train_list.is_file() != test_list.is_file():
            missing = test_list if train_list.is_file() else train_list
            raise DatasetError(f"{missing}: split list missing (its partner list exists); restore it")
        if train_list.is_file():
            lists[split] = (train_list, test_list)
    if not lists:
        raise DatasetError(f"{splits_dir}: no trainlist0{{1,2,3}}.txt / testlist0{{1,2,3}}.txt; pass --splits DIR")
    return lists


@dataclasses.dataclass
class _Video:
    path: Path
    label: int
    class_name: str
    splits: dict[str, str] = dataclasses.field(default_factory=dict)


class _Resolver:
    """Turns `{Class}/{video}.avi` from a list into the file on disk and its label."""

    def __init__(self, root: Path, class_names: list[str]):
        self.root = root
        self.class_names = class_names
        self.label_by_class = {name.casefold(): label for label, name in enumerate(class_names)}
        self.folders = NameLookup(entry.name for entry in root.iterdir() if entry.is_dir())
        self.files_by_folder: dict[str, NameLookup] = {}

    def folder_of(self, class_name: str) -> str | None:
        return self.folders.find(class_name)

    def files_in(self, folder: str) -> NameLookup:
        if folder not in self.files_by_folder:
            self.files_by_folder[folder] = NameLookup(video_names(self.root / folder))
        return self.files_by_folder[folder]

    def resolve(self, listed: str, where: str) -> tuple[Path, int]:
        parts = listed.split("/")
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"{where}: expected '<Class>/<video>.avi', got {listed!r}; fix the line")
        class_part, file_part = parts
        label = self.label_by_class.get(class_part.casefold())
        if label is None:
            raise DatasetError(f"{where}: class {class_part!r} is not in classInd.txt; fix the line or classInd.txt")
        folder = self.folder_of(class_part)
        name = self.files_in(folder).find(file_part) if folder is not None else None
        if name is None:
            missing = self.root / class_part / file_part
            raise DatasetError(f"{where}: video {missing} not found; restore it or fix --root")
        return self.root / folder / name, label


def read_split_list(path: Path, role: str, split: str, resolver: _Resolver, videos: dict[Path, _Video]) -> None:
    """Add `role` in `split` to every video `path` lists; a trainlist label must match classInd."""
    for number, line in split_file_lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) not in ((2,) if role == "train" else (1, 2)):
            expected = "<Class>/<video>.avi <id>" if role == "train" else "<Class>/<video>.avi"
            raise DatasetError(f"{where}: expected '{expected}', got {line!r}; fix the line")
        video_path, label = resolver.resolve(fields[0], where)
        if len(fields) == 2 and fields[1] != str(label + 1):
            raise DatasetError(
                f"{where}: label {fields[1]} disagrees with classInd.txt"
                f" ({label + 1} {resolver.class_names[label]}); fix the line"
            )
        video = videos.setdefault(video_path, _Video(video_path, label, resolver.class_names[label]))
        if video.splits.get(split, role) != role:
            raise DatasetError(f"{where}: {fields[0]} is listed as both train and test in split {split}; fix the lists")
        video.splits[split] = role


def add_unlisted(resolver: _Resolver, videos: dict[Path, _Video]) -> int:
    """Videos in class folders that no list names, kept as 'unused'; returns how many."""
    added = 0
    for label, class_name in enumerate(resolver.class_names):
        folder = resolver.folder_of(class_name)
        if folder is None:
            continue
        for name in video_names(resolver.root / folder):
            path = resolver.root / folder / name
            if path not in videos:
                videos[path] = _Video(path, label, class_name)
                added += 1
    return added


@register_adapter("ucf101", "UCF-101: {root}/{Class}/v_*.avi + ucfTrainTestlist/{classInd,trainlist0k,testlist0k}.txt")
def load(root: Path, *, splits_dir: str | Path | None = None, annotations: str | Path | None = None) -> DatasetListing:
    reject_options("ucf101", annotations=annotations)
    root = Path(root)
    splits_dir = resolve_folder(
        splits_dir, [root / candidate for candidate in DEFAULT_SPLIT_FOLDERS], "UCF-101 split", "--splits"
    )
    class_names = read_class_index(splits_dir)
    split_lists = find_split_lists(splits_dir)
    resolver = _Resolver(root, class_names)
    videos: dict[Path, _Video] = {}
    for split, (train_list, test_list) in split_lists.items():
        read_split_list(train_list, "train", split, resolver, videos)
        read_split_list(test_list, "test", split, resolver, videos)
    unlisted = add_unlisted(resolver, videos)
    records = [
        VideoRecord(
            id=video.path.stem,
            path=video.path,
            label=video.label,
            class_name=video.class_name,
            splits={split: video.splits.get(split, "unused") for split in split_lists},
        )
        for video in videos.values()
    ]
    require_unique_ids(records, "ucf101")
    logger.info("ucf101: %d classes, %d videos, splits %s", len(class_names), len(records), ",".join(split_lists))
    if unlisted:
        logger.info("ucf101: %d videos are in no split list; kept with role 'unused'", unlisted)
    return DatasetListing("ucf101", root, sorted_records(records), class_names=class_names)
