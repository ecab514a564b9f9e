"""Which of a dataset's videos a stage uses: a split/role filter, then an optional `limit`.

Stage one extracts every listed video by default. For a labeled dataset that is also scored (HMDB-51,
UCF-101) that would put the test videos into pretraining, so `split=1, roles=("train",)` keeps only
split 1's train list (records carry their role per split; see `VideoRecord.role`). The filter runs
before the listing is hashed, so the stage key follows it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pipeline.datasets.records import DatasetListing
from pipeline.errors import ConfigError, DatasetError

ROLES = ("train", "val", "test", "unused")


def select_records(
    listing: DatasetListing, *, split: int | None = None, roles: Sequence[str] = ("train",), limit: int | None = None
) -> DatasetListing:
    """A copy of `listing` with the records whose role in `split` is one of `roles` (all records when
    `split` is None), then the first `limit` of them. An empty selection is an error naming the filter."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ConfigError(f"split_roles {list(roles)!r}: each must be one of {', '.join(ROLES)}")
    records = list(listing.records)
    if split is not None:
        records = [record for record in records if record.role(split) in roles]
        if not records:
            raise DatasetError(
                f"{listing.root}: no {listing.dataset} video has role {'/'.join(roles)} in split {split}; check the "
                "split files, or drop `split` to use every listed video"
            )
    if limit is not None:
        records = records[:limit]
    return dataclasses.replace(listing, records=records)
