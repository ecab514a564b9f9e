"""Stage one's split/role filter: pretraining on a labeled dataset can leave its test lists out."""

from __future__ import annotations

import pytest

from dataset_fixtures import make_hmdb51
from extract.config import ExtractConfig
from pipeline.datasets import load_dataset
from pipeline.datasets.selection import select_records
from pipeline.errors import ConfigError, DatasetError
from pipeline.stages import manifest_hash_of


def test_split_filter_keeps_only_that_splits_roles(tmp_path):
    layout = make_hmdb51(tmp_path)
    listing = load_dataset("hmdb51", layout.root, splits_dir=str(layout.splits_dir))
    train = select_records(listing, split=1, roles=("train",))
    expected = sorted(video for video, (_, _, roles) in layout.expected.items() if roles["1"] == "train")
    assert sorted(record.id for record in train.records) == expected
    assert expected and len(expected) < len(listing.records)
    assert not any(record.role(1) == "test" for record in train.records)
    both = select_records(listing, split=2, roles=("train", "unused"))
    assert {record.role(2) for record in both.records} == {"train", "unused"}
    assert len(select_records(listing).records) == len(listing.records)  # no split: every video
    assert len(select_records(listing, split=1, limit=2).records) == 2


def test_split_filter_changes_the_extract_key_and_refuses_bad_values(tmp_path):
    layout = make_hmdb51(tmp_path)
    everything = manifest_hash_of("hmdb51", str(layout.root), splits_dir=str(layout.splits_dir))
    train_only = manifest_hash_of("hmdb51", str(layout.root), split=1, splits_dir=str(layout.splits_dir))
    assert everything != train_only
    listing = load_dataset("hmdb51", layout.root, splits_dir=str(layout.splits_dir))
    with pytest.raises(ConfigError, match="split_roles"):
        select_records(listing, split=1, roles=("training",))
    with pytest.raises(DatasetError, match="split 7"):
        select_records(listing, split=7)
    with pytest.raises(ConfigError, match="split"):
        ExtractConfig(split=0)
