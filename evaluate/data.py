"""The labeled data of stage three: a dataset listing, the folder its splits came from, each split's lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distinit.evaluate.config import EvalConfig
from distinit.pipeline.datasets import DatasetListing, VideoRecord, load_dataset, manifest_hash
from distinit.pipeline.datasets import hmdb51, ucf101
from distinit.pipeline.datasets.layout import resolve_folder
from distinit.pipeline.errors import DistinitError

# Where each adapter looks for its split files when --splits-dir is not given (the adapters' own lists).
SPLIT_FOLDERS = {"hmdb51": (hmdb51.DEFAULT_SPLIT_FOLDERS, "HMDB-51 split"),
                 "ucf101": (ucf101.DEFAULT_SPLIT_FOLDERS, "UCF-101 split")}


def load_listing(config: EvalConfig) -> tuple[DatasetListing, Path]:
    """The dataset's records and the split folder they were read with."""
    if not config.root:
        raise DistinitError(f"no dataset root; pass --root DIR with the {config.data} videos")
    listing = load_dataset(config.data, config.root, splits_dir=config.splits_dir)
    candidates, what = SPLIT_FOLDERS[config.data]
    root = Path(config.root)
    splits_folder = resolve_folder(config.splits_dir, [root / candidate for candidate in candidates], what, "--splits-dir")
    if not listing.class_names:
        raise DistinitError(f"{root}: {config.data} listing has no classes; check --root and --splits-dir")
    return listing, splits_folder


def split_records(listing: DatasetListing, split: int, splits_folder: Path) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train list, test list) of `split`; an empty one is an error naming the split and its folder."""
    lists = {role: listing.split(str(split), role) for role in ("train", "test")}
    for role, records in lists.items():
        if not records:
            raise DistinitError(
                f"{splits_folder}: split {split} has an empty {role} list for {listing.dataset}; fix its split files "
                "or leave the split out of --splits"
            )
    return lists["train"], lists["test"]


def dataset_description(config: EvalConfig, listing: DatasetListing, splits_folder: Path) -> dict[str, Any]:
    """What results.json records about the data; the manifest hash enters the results key."""
    return {
        "name": listing.dataset,
        "root": str(Path(config.root).resolve()),
        "splits_dir": str(splits_folder.resolve()),
        "manifest_sha256": manifest_hash(listing),
        "num_classes": len(listing.class_names),
        "videos": len(listing.records),
        "split_sizes": {str(split): {role: len(listing.split(str(split), role)) for role in ("train", "test")}
                        for split in config.splits},
    }
