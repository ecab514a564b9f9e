"""Stage one's split/role filter: pretraining on a labeled dataset can leave its test lists out."""

from __future__ import annotations

import dataclasses

import pytest

from dataset_fixtures import make_hmdb51
from distinit.extract.config import ExtractConfig
from distinit.pipeline.datasets import load_dataset
from distinit.pipeline.datasets.selection import select_records
from distinit.pipeline.errors import ConfigError, DatasetError
from distinit.pipeline.stages.graph import manifest_hash_of


def test_split_filter_keeps_only_that_splits_roles(tmp_path):
    layout = make_hmdb51(tmp_path)
    listing = load_dataset("hmdb51", layout.root, splits_dir=str(layout.splits_dir))
    train = select_records(listing, splits=1, roles=("train",))
    expected = sorted(video for video, (_, _, roles) in layout.expected.items() if roles["1"] == "train")
    assert sorted(record.id for record in train.records) == expected
    assert expected and len(expected) < len(listing.records)
    assert not any(record.role(1) == "test" for record in train.records)
    both = select_records(listing, splits=[2], roles=("train", "unused"))
    assert {record.role(2) for record in both.records} == {"train", "unused"}
    assert len(select_records(listing).records) == len(listing.records)  # no split: every video
    assert len(select_records(listing, splits=1, limit=2).records) == 2


def test_split_filter_changes_the_extract_key_and_refuses_bad_values(tmp_path):
    layout = make_hmdb51(tmp_path)
    everything = manifest_hash_of("hmdb51", str(layout.root), splits_dir=str(layout.splits_dir))
    train_only = manifest_hash_of("hmdb51", str(layout.root), splits=1, splits_dir=str(layout.splits_dir))
    assert everything != train_only
    listing = load_dataset("hmdb51", layout.root, splits_dir=str(layout.splits_dir))
    with pytest.raises(ConfigError, match="split_roles"):
        select_records(listing, splits=1, roles=("training",))
    with pytest.raises(DatasetError, match=r"split\(s\) 7"):
        select_records(listing, splits=7)
    for bad in (0, [1, 0], "1"):
        with pytest.raises(ConfigError, match="split"):
            ExtractConfig(split=bad)
    ExtractConfig(split=[1, 2, 3], split_roles=("train", "unused"))


def test_three_split_selection_leaves_out_every_test_list(tmp_path):
    layout = make_hmdb51(tmp_path)
    listing = load_dataset("hmdb51", layout.root, splits_dir=str(layout.splits_dir))
    chosen = select_records(listing, splits=[1, 2, 3], roles=("train", "unused"))
    in_no_test_list = sorted(video for video, (_, _, roles) in layout.expected.items() if "test" not in roles.values())
    assert sorted(record.id for record in chosen.records) == in_no_test_list
    # Split 1's train list alone still holds test videos of splits 2 and 3 (the reason for the list form).
    split_one = select_records(listing, splits=1)
    assert any(record.role(2) == "test" or record.role(3) == "test" for record in split_one.records)


def test_split_roles_do_not_enter_the_extract_key_without_a_split():
    from distinit.pipeline.stages.graph import PipelineSpec, extract_inputs

    def key(*pairs):
        spec = PipelineSpec(stamps_dir=".stamps/demo", data="demo", extract_set=tuple(pairs))
        return extract_inputs(spec, upstream="demo-key").key

    assert key() == key("split_roles=[test]")
    assert key("split=1") != key("split=1", "split_roles=[test]")


def _one_line_naming_the_choices(message: str) -> None:
    assert "\n" not in message.strip(), message
    for option in ("split=[1,2,3] split_roles=[train,unused]", "split=1", "EXTRACT_SET=", "--set split=",
                   "allow_labeled_test_videos=true"):
        assert option in message, (option, message)


@pytest.mark.parametrize("data", ["hmdb51", "ucf101"])
def test_labeled_extract_without_split_is_refused(tmp_path, data):
    """A labeled dataset that is scored is refused without a split: in its config, in `distinit extract` and when
    make computes the extract key, before any video is read; a split or the explicit override lets it through,
    and the unlabeled pretraining sources are never refused."""
    from click.testing import CliRunner

    from dataset_fixtures import make_ucf101
    from distinit.pipeline.cli import main
    from distinit.pipeline.stages.graph import PipelineSpec, extract_inputs

    layout = make_hmdb51(tmp_path) if data == "hmdb51" else make_ucf101(tmp_path)
    with pytest.raises(ConfigError, match=f"data {data}: no split chosen") as refused:
        ExtractConfig(data=data, root=str(layout.root))
    _one_line_naming_the_choices(str(refused.value))
    for allowed in ({"split": 1}, {"split": [1, 2, 3], "split_roles": ("train", "unused")},
                    {"allow_labeled_test_videos": True}):
        ExtractConfig(data=data, root=str(layout.root), **allowed)
    for unlabeled in ("kinetics", "folder", "demo"):
        ExtractConfig(data=unlabeled, root=str(tmp_path))
    out = tmp_path / "targets"
    result = CliRunner().invoke(main, ["extract", "--data", data, "--root", str(layout.root), "--splits",
                                       str(layout.splits_dir), "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 1 and f"data {data}: no split chosen" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    _one_line_naming_the_choices(result.output)
    assert not out.exists()  # refused before anything was written
    spec = PipelineSpec(stamps_dir=str(tmp_path / "stamps"), data=data, root=str(layout.root),
                        targets_root=str(out), extract_set=(f"splits_dir={layout.splits_dir}",))
    with pytest.raises(ConfigError, match="no split chosen"):
        extract_inputs(spec, upstream=None)  # what `make extract DATA=...` computes first
    keys = {extract_inputs(dataclasses.replace(spec, extract_set=(*spec.extract_set, choice)), upstream=None).key
            for choice in ("split=1", "allow_labeled_test_videos=true")}
    assert len(keys) == 2  # each choice extracts its own videos, so its own targets folder
