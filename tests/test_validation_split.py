"""Issue 19 item 3: one split's train list divided once into train and validation, in whole source groups and
stratified by class, on fixture trees laid out like HMDB-51 (one clip and several clips per source) and UCF-101."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from dataset_fixtures import make_hmdb51, make_hmdb51_grouped, make_ucf101
from distinit.evaluate.validation import check_validation_split, split_validation
from distinit.pipeline.datasets import VideoRecord, load_dataset
from distinit.pipeline.datasets.groups import source_group
from distinit.pipeline.errors import ConfigError, DatasetError

LAYOUTS = {"hmdb51": (make_hmdb51, "hmdb51"), "hmdb51 grouped": (make_hmdb51_grouped, "hmdb51"),
           "ucf101": (make_ucf101, "ucf101")}


@pytest.fixture(scope="module")
def listings(tmp_path_factory) -> dict:
    """layout name -> (dataset, listing), each tree built once."""
    built = {}
    for name, (make, dataset) in LAYOUTS.items():
        layout = make(tmp_path_factory.mktemp(name.replace(" ", "_")))
        built[name] = (dataset, load_dataset(dataset, layout.root, splits_dir=layout.splits_dir))
    return built


def ids(records) -> set[str]:
    return {record.id for record in records}


def groups(dataset: str, records) -> set[str]:
    return {source_group(dataset, record.id) for record in records}


def assert_stratified(dataset: str, train_list, validation, fraction: float) -> None:
    """Per class: validation within one group of fraction x its train videos; a training group kept."""
    by_class = defaultdict(lambda: defaultdict(int))
    for record in train_list:
        by_class[record.label][source_group(dataset, record.id)] += 1
    held = Counter(record.label for record in validation)
    for label, sizes in by_class.items():
        assert abs(held[label] - fraction * sum(sizes.values())) <= max(sizes.values()), (label, held[label], sizes)
        if len(sizes) >= 2:
            kept = {group for group in sizes} - groups(dataset, validation)
            assert kept, f"class {label} lost every training group"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_validation_split_never_holds_test_or_shares_groups(listings, layout):
    dataset, listing = listings[layout]
    divisions = defaultdict(set)  # how seeds 0-4 divide, over the splits: the seed must matter somewhere
    for split in ("1", "2", "3"):
        train_list, test_list = listing.split(split, "train"), listing.split(split, "test")
        assert train_list and test_list
        for fraction in (0.2, 0.4):
            train, validation = split_validation(train_list, dataset, fraction, seed=0)
            check_validation_split(train, validation, test_list, dataset)
            assert validation and ids(train) | ids(validation) == ids(train_list)
            assert not ids(train) & ids(validation) and not (ids(train) | ids(validation)) & ids(test_list)
            assert not groups(dataset, train) & groups(dataset, validation)
            assert_stratified(dataset, train_list, validation, fraction)
            assert [record.id for record in train] == [record.id for record in train_list if record in train]
            # deterministic, and independent of the order the records come in
            assert split_validation(train_list, dataset, fraction, seed=0) == (train, validation)
            shuffled = list(train_list)
            random.Random(split).shuffle(shuffled)
            for order in (shuffled, train_list[::-1]):
                again_train, again_validation = split_validation(order, dataset, fraction, seed=0)
                assert (ids(again_train), ids(again_validation)) == (ids(train), ids(validation))
            for seed in range(5):
                divisions[fraction, split].add(frozenset(ids(split_validation(train_list, dataset, fraction, seed)[1])))
        # fraction 0: no validation part, the train list as it was
        assert split_validation(train_list, dataset, 0.0, seed=3) == (list(train_list), [])
    assert any(len(seen) > 1 for seen in divisions.values())
    if layout != "hmdb51":  # the layouts with several clips per source: a group that is split would show above
        assert max(Counter(source_group(dataset, record.id) for record in listing.records).values()) > 1


def _record(video_id: str, label: int, class_name: str) -> VideoRecord:
    return VideoRecord(video_id, Path(f"/videos/{video_id}.avi"), label, class_name, {"1": "train"})


def test_a_class_with_one_source_group_stays_in_train_and_is_logged(caplog):
    records = [_record(f"a/v_A_g01_c0{clip}", 0, "A") for clip in range(1, 5)]
    records += [_record(f"b/v_B_g0{group}_c01", 1, "B") for group in range(1, 6)]
    with caplog.at_level(logging.WARNING, logger="distinit.evaluate.validation"):
        train, validation = split_validation(records, "ucf101", 0.4, seed=0)
    assert {record.class_name for record in validation} == {"B"} and len(validation) == 2
    assert ids(records[:4]) <= ids(train)
    assert "1 classes have one source group" in caplog.text and ": A" in caplog.text
    # two groups and a fraction near 1: the class still keeps one group for training
    pair = [_record("c/v_C_g01_c01", 2, "C"), _record("c/v_C_g02_c01", 2, "C")]
    train, validation = split_validation(pair, "ucf101", 0.99, seed=0)
    assert len(train) == 1 and len(validation) == 1


def test_bad_divisions_and_bad_input_are_refused(listings):
    dataset, listing = listings["ucf101"]
    train_list, test_list = listing.split("1", "train"), listing.split("1", "test")
    train, validation = split_validation(train_list, dataset, 0.4, seed=0)
    with pytest.raises(DatasetError, match="test videos of the split are in the validation part"):
        check_validation_split(train, validation + test_list[:1], test_list, dataset)
    with pytest.raises(DatasetError, match="test videos of the split are in the train part"):
        check_validation_split(train + test_list[:1], validation, test_list, dataset)
    with pytest.raises(DatasetError, match="in both the train and the validation part"):
        check_validation_split(train + validation[:1], validation, test_list, dataset)
    # one clip of a validation group moved to train: the group is on both sides
    moved = validation[0]
    with pytest.raises(DatasetError, match="source groups have clips in both"):
        check_validation_split(train + [moved], validation[1:], test_list, dataset)
    for fraction in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="validation fraction must be in"):
            split_validation(train_list, dataset, fraction, seed=0)
    with pytest.raises(ConfigError, match="validation seed must be"):
        split_validation(train_list, dataset, 0.2, seed=-1)
    with pytest.raises(DatasetError, match="no class label"):
        split_validation([VideoRecord("x", Path("/x.avi"))], dataset, 0.2, seed=0)
    with pytest.raises(DatasetError, match="listed twice"):
        split_validation(train_list + train_list[:1], dataset, 0.2, seed=0)
