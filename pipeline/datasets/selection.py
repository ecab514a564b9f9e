"""Which of a dataset's videos a stage uses: a split/role filter, then an optional `limit`.

Stage one extracts every listed video by default. For a labeled dataset that is also scored (HMDB-51,
UCF-101) that would put the test videos into pretraining. `splits=[1], roles=("train",)` keeps split 1's
train list, which is right for an evaluation on split 1 only: split 1's train list holds test videos of
splits 2 and 3. For the usual 3-split protocol, `splits=[1, 2, 3], roles=("train", "unused")` keeps the
videos that are in no split's test list: a record is kept when its role is one of `roles` in EVERY
listed split (records carry their role per split; see `VideoRecord.role`). The filter runs before the
listing is hashed, so the stage key follows it.

Because every listed video is the default, stage one refuses a labeled dataset that is scored (LABELED_DATASETS)
without a `split` (`check_labeled_selection`): otherwise the test videos go into pretraining and the refusal
would come only at evaluation, after the distillation. `allow_labeled_test_videos` extracts them all anyway.
Kinetics, a folder and the demo's pool are pretraining sources that nothing is scored on: never refused.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from distinit.pipeline.datasets.records import DatasetListing
from distinit.pipeline.errors import ConfigError, DatasetError

ROLES = ("train", "val", "test", "unused")
# The data sets stage three scores on: their test lists must stay out of pretraining.
LABELED_DATASETS = ("hmdb51", "ucf101")
THREE_SPLIT_CHOICE = "split=[1,2,3] split_roles=[train,unused]"


def select_records(
    listing: DatasetListing, *, splits: Sequence[int] | int | None = None, roles: Sequence[str] = ("train",),
    limit: int | None = None,
) -> DatasetListing:
    """A copy of `listing` with the records whose role is one of `roles` in every split of `splits` (all
    records when `splits` is None or empty), then the first `limit` of them. An empty selection is an
    error naming the filter."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ConfigError(f"split_roles {list(roles)!r}: each must be one of {', '.join(ROLES)}")
    splits = normalise_splits(splits)
    records = list(listing.records)
    if splits:
        records = [record for record in records if all(record.role(split) in roles for split in splits)]
        if not records:
            raise DatasetError(
                f"{listing.root}: no {listing.dataset} video has role {'/'.join(roles)} in split(s) "
                f"{', '.join(map(str, splits))}; check the split files, or drop `split` to use every listed video"
            )
    if limit is not None:
        records = records[:limit]
    return dataclasses.replace(listing, records=records)


def normalise_splits(splits: Sequence[int] | int | None) -> tuple[int, ...]:
    """None, one split number or a list of them -> a sorted tuple of distinct split numbers (each >= 1)."""
    if splits is None:
        return ()
    values = (splits,) if isinstance(splits, int) else tuple(splits)
    if any(not isinstance(value, int) or isinstance(value, bool) or value < 1 for value in values):
        raise ConfigError(f"split {splits!r}: expected a split number >= 1 or a list of them (e.g. [1, 2, 3])")
    return tuple(sorted(set(values)))


def check_labeled_selection(data: str, splits: Sequence[int] | int | None, allow_test_videos: bool) -> None:
    """Refuse, in one line saying how to choose, to pretrain on every video of a labeled dataset that is scored
    (`data` in LABELED_DATASETS, no `splits`), unless `allow_test_videos`."""
    if data not in LABELED_DATASETS or normalise_splits(splits) or allow_test_videos:
        return
    raise ConfigError(
        f"data {data}: no split chosen, so every listed video would be extracted, the test videos that eval scores "
        f"on included; choose the videos with `{THREE_SPLIT_CHOICE}` (in no test list: the 3-split protocol) or "
        f"`split=1` (split 1's train list: split 1 alone), e.g. make extract EXTRACT_SET='{THREE_SPLIT_CHOICE}' or "
        f"distinit extract --set split=[1,2,3] --set split_roles=[train,unused], or pass "
        f"allow_labeled_test_videos=true (--set allow_labeled_test_videos=true) to extract them all anyway"
    )


def selected_listing(config) -> DatasetListing:
    """The listing a stage reading a dataset works on: `config`'s data/root (with its splits_dir and annotations),
    narrowed by its split/split_roles/limit. Extract and prepare configs share these options, so both call this."""
    from distinit.pipeline.datasets import load_dataset

    listing = load_dataset(config.data, config.root, splits_dir=config.splits_dir, annotations=config.annotations)
    return select_records(listing, splits=config.split, roles=config.split_roles, limit=config.limit)
