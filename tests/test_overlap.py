"""Item 4: eval refuses a DistInit init whose pretraining videos include the test videos it is scored on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dataset_fixtures import make_hmdb51
from distinit.distill.heads import HeadSpec
from distinit.distill.students import create_student
from distinit.evaluate.config import EvalConfig
from distinit.evaluate.data import load_listing, split_records
from distinit.evaluate.initialization import resolve_init
from distinit.evaluate.overlap import TestOverlapError, check_pretraining_overlap, overlap_text, pretraining_videos
from distinit.pipeline.cli import main
from distinit.pipeline.datasets import DatasetListing, VideoRecord, write_manifest
from distinit.pipeline.hashing import sha256_json


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    """HMDB-51 layout with placeholder files: listing and split lists only, nothing is decoded."""
    return make_hmdb51(tmp_path_factory.mktemp("hmdb"))


def _split_lists(layout, splits=(1,)):
    config = EvalConfig(root=str(layout.root), splits_dir=str(layout.splits_dir), splits=splits)
    listing, folder = load_listing(config)
    return {split: split_records(listing, split, folder) for split in splits}


def _stems(layout, split: int, role: str) -> list[str]:
    return sorted(video_id.split("/", 1)[1] for video_id, (_, _, roles) in layout.expected.items()
                  if roles[str(split)] == role)


def _checkpoint(path: Path, provenance: dict, names: list[str] | None = None, dataset: str | None = None) -> Path:
    """A distill-shaped checkpoint; `names`: its pretraining videos, kept as distill keeps them (the names once,
    at the top level; count and hash in the provenance)."""
    student = create_student("r2plus1d_18", [HeadSpec("imagenet-test/logits", "logits", (5,))], width="tiny")
    state = {"model": student.state_dict(), "architecture": student.architecture(), "optimizer": {}, "step": 1,
             "epoch": 1, "rng": {}, "config": {"frames": 4, "stride": 2, "short_side": 32, "crop": 32},
             "best_val_loss": 1.0, "provenance": provenance}
    if names is not None:
        state["pretraining_videos"] = {"count": len(names), "names": names, "sha256": sha256_json(names)}
        provenance["pretraining_videos"] = {"count": len(names), "sha256": sha256_json(names), "dataset": dataset}
    torch.save(state, path)
    return path


def _assert_no_names(*reported) -> None:
    """What goes into results.json and provenance.json (the init's description, the overlap report) lists no
    pretraining video names: for Kinetics that would be megabytes in every file."""
    for value in reported:
        text = json.dumps(value, default=str)
        assert '"names"' not in text, text[:300]


def test_pretraining_overlap_with_test_list_is_refused(hmdb, tmp_path):
    test_stems, train_stems = _stems(hmdb, 1, "test"), _stems(hmdb, 1, "train")
    seen = [test_stems[0], test_stems[1], *train_stems]  # distilled on the whole dataset, two test videos included
    provenance = {"targets_dir": str(tmp_path / "targets")}
    description = resolve_init(str(_checkpoint(tmp_path / "seen.pt", provenance, sorted(seen), "hmdb51"))).description
    split_lists = _split_lists(hmdb)
    with pytest.raises(TestOverlapError) as refused:
        check_pretraining_overlap(description, split_lists, allow=False)
    message = str(refused.value)
    assert "\n" not in message
    assert f"2 test videos of split 1 overlap its {len(seen)} pretraining videos (2 by name," in message
    assert "--allow-test-overlap" in message
    # the flag lets it through, and the report counts what was seen
    report = check_pretraining_overlap(description, split_lists, allow=True)
    _assert_no_names(description, report)
    assert report["videos"]["source"] == "checkpoint"
    assert report["test_overlap"] == 2 and report["test_overlap_by_split"] == {"1": 2}
    assert report["test_overlap_by_kind"] == {"exact_stem": 2, "same_content": 0, "same_group": 0}
    assert report["test_dataset"] == "hmdb51" and report["content_checked"] is False  # no hashes recorded
    assert report["videos"]["count"] == len(seen) and report["videos"]["dataset"] == "hmdb51"
    assert report["test_overlap_examples"] == sorted(test_stems[:2])
    data, videos, overlap = overlap_text(report)
    assert (data, videos) == ("hmdb51", str(len(seen))) and "allowed" in overlap
    assert overlap.startswith("2 (split 1: 2); 2 by name, 0 same content, 0 same source video; content not checked")
    # train videos only: nothing to refuse
    clean = resolve_init(str(_checkpoint(tmp_path / "clean.pt", {}, train_stems))).description
    report = check_pretraining_overlap(clean, split_lists, allow=False)
    assert report["test_overlap"] == 0 and report["videos"]["count"] == len(train_stems)


def test_eval_and_compare_refuse_before_any_run(hmdb, tmp_path):
    seen = _stems(hmdb, 1, "test")[:1]
    checkpoint = _checkpoint(tmp_path / "seen.pt", {}, seen)
    common = ["--data", "hmdb51", "--root", str(hmdb.root), "--splits", "1", "--set", f"splits_dir={hmdb.splits_dir}",
              "--epochs", "1", "--no-progress"]
    for command in (["eval", "--init", str(checkpoint), "--out", str(tmp_path / "eval"), "--batch-size", "2"],
                    ["compare", "--inits", f"scratch,{checkpoint}", "--out", str(tmp_path / "compare")]):
        result = CliRunner().invoke(main, [*command, *common])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert "1 test videos of split 1 overlap its 1 pretraining videos (1 by name" in result.output
    # refused before anything is written (compare: before scratch, listed first, ran)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "compare").exists()


def _targets(folder: Path, stems: list[str]) -> Path:
    """A targets folder as extract leaves it: manifest.json naming videos.jsonl, and the video list."""
    folder.mkdir(parents=True)
    records = [VideoRecord(id=stem, path=folder / "videos" / f"{stem}.avi") for stem in stems]
    write_manifest(DatasetListing("folder", folder / "videos", records), folder / "videos.jsonl")
    (folder / "manifest.json").write_text(json.dumps({"extra": {"videos_manifest": "videos.jsonl"},
                                                      "config": {"data": "hmdb51"}}))
    return folder


def test_names_kept_in_the_provenance_are_read_from_the_file_and_left_out_of_the_description(hmdb, tmp_path):
    """Checkpoints written before the names had their own key kept them in the provenance."""
    seen = _stems(hmdb, 1, "test")[:2]
    provenance = {"pretraining_videos": {"count": 2, "names": seen, "dataset": "hmdb51"}}
    description = resolve_init(str(_checkpoint(tmp_path / "older.pt", provenance))).description
    _assert_no_names(description)
    assert description["distill_provenance"]["pretraining_videos"] == {"count": 2, "dataset": "hmdb51"}
    report = check_pretraining_overlap(description, _split_lists(hmdb), allow=True)
    assert report["test_overlap"] == 2 and report["videos"]["source"] == "checkpoint"


def test_older_checkpoints_fall_back_to_the_targets_video_list_or_are_refused(hmdb, tmp_path):
    split_lists = _split_lists(hmdb, splits=(1, 2))
    seen = _stems(hmdb, 2, "test")[:3]
    targets = _targets(tmp_path / "targets", seen + ["kinetics_abc_000001_000011"])
    description = {"kind": "checkpoint", "spec": "old.pt", "distill_provenance": {"targets_dir": str(targets)}}
    videos = pretraining_videos(description)
    assert videos["count"] == 4 and videos["dataset"] == "hmdb51" and videos["source"].endswith("videos.jsonl")
    report = check_pretraining_overlap(description, split_lists, allow=True)
    assert report["test_overlap_by_split"]["2"] == 3 and report["test_overlap"] >= 3
    with pytest.raises(TestOverlapError, match="split .*2"):
        check_pretraining_overlap(description, split_lists, allow=False)
    # no recorded videos and no readable targets list: cannot be checked
    unknown = {"kind": "checkpoint", "spec": "older.pt", "distill_provenance": {"targets_dir": str(tmp_path / "gone")}}
    with pytest.raises(TestOverlapError, match=r"cannot be checked.*--allow-test-overlap") as refused:
        check_pretraining_overlap(unknown, split_lists, allow=False)
    assert "\n" not in str(refused.value)
    report = check_pretraining_overlap(unknown, split_lists, allow=True)
    assert report["test_overlap"] is None and overlap_text(report)[2] == "not checked (allowed)"


def test_scratch_and_inflated_inits_saw_no_video(hmdb):
    split_lists = _split_lists(hmdb)
    for description in ({"kind": "scratch", "spec": "scratch"}, {"kind": "inflated", "spec": "inflated:resnet18"}):
        report = check_pretraining_overlap(description, split_lists, allow=False)
        assert report["test_overlap"] == 0 and report["videos"]["count"] == 0
        assert overlap_text(report) == ("none (no video)", "0", "0")


def test_allow_flag_reaches_the_config_and_stays_out_of_the_results_key():
    from distinit.pipeline.cli.eval_commands import _eval_config

    assert _eval_config(None, (), None, None, {"allow_test_overlap": True}).allow_test_overlap is True
    assert _eval_config(None, (), None, None, {"allow_test_overlap": None}).allow_test_overlap is False
    assert "allow_test_overlap" not in EvalConfig(allow_test_overlap=True).key_fields()


def _content_checkpoint(path: Path, names: list[str], files: list[Path]) -> str:
    """A distill-3 checkpoint: `names` and the content hashes of `files`, cut as distill cuts them."""
    from distinit.distill.checkpoint import CONTENT_HASH_DIGITS
    from distinit.pipeline.hashing import sha256_file

    checkpoint = _checkpoint(path, {}, names, "folder")
    state = torch.load(checkpoint, weights_only=False)
    state["pretraining_videos"]["content_sha256"] = sorted(sha256_file(file)[:CONTENT_HASH_DIGITS] for file in files)
    torch.save(state, checkpoint)
    return resolve_init(str(checkpoint)).description


def test_another_clip_of_a_test_source_video_is_caught_by_group(hmdb, tmp_path):
    """HMDB-51: a clip of a test video's source (its name with another clip number); UCF-101: a gXX sibling."""
    from dataset_fixtures import make_ucf101

    split_lists = _split_lists(hmdb)
    test_stem = _stems(hmdb, 1, "test")[0]
    sibling = test_stem.rsplit("_", 1)[0] + "_9"  # not in the dataset: another clip of the same source video
    description = resolve_init(str(_checkpoint(tmp_path / "sibling.pt", {}, [sibling]))).description
    with pytest.raises(TestOverlapError, match="1 test videos of split 1 overlap .*1 same source video") as refused:
        check_pretraining_overlap(description, split_lists, allow=False)
    assert "\n" not in str(refused.value) and test_stem in str(refused.value)
    ucf = make_ucf101(tmp_path / "ucf")
    config = EvalConfig(data="ucf101", root=str(ucf.root), splits_dir=str(ucf.splits_dir), splits=(1,))
    listing, folder = load_listing(config)
    ucf_lists = {1: split_records(listing, 1, folder)}
    # split 1 tests on group g01 (two clips each class); c07 is a clip of that group the lists never name
    description = resolve_init(str(_checkpoint(tmp_path / "ucf.pt", {}, ["v_ApplyEyeMakeup_g01_c07"]))).description
    report = check_pretraining_overlap(description, ucf_lists, allow=True)
    assert report["test_dataset"] == "ucf101"  # inferred from the test stems; the caller may also name it
    assert report["test_overlap_by_kind"] == {"exact_stem": 0, "same_content": 0, "same_group": 2}
    assert report["test_overlap_examples"] == ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g01_c02"]
    # the test dataset's rule names both sides: under HMDB-51's rule, c07 and c01 are different sources
    assert check_pretraining_overlap(description, ucf_lists, allow=True, dataset="hmdb51")["test_overlap"] == 0
    clean = resolve_init(str(_checkpoint(tmp_path / "clean.pt", {}, ["v_ApplyEyeMakeup_g02_c07"]))).description
    assert check_pretraining_overlap(clean, ucf_lists, allow=False)["test_overlap"] == 0


def test_a_renamed_copy_of_a_test_video_is_caught_by_content(tmp_path):
    layout = make_hmdb51(tmp_path / "hmdb")
    for video_id in layout.expected:  # placeholders all hold the same bytes: give each its own
        class_name, stem = video_id.split("/", 1)
        (layout.root / class_name / f"{stem}.avi").write_bytes(f"video {video_id}\n".encode())
    split_lists = _split_lists(layout)
    test_stem = _stems(layout, 1, "test")[0]
    test_file = next(layout.root.glob(f"*/{test_stem}.avi"))
    copy = tmp_path / "pool" / "holiday.avi"
    copy.parent.mkdir()
    copy.write_bytes(test_file.read_bytes())
    train_files = [next(layout.root.glob(f"*/{stem}.avi")) for stem in _stems(layout, 1, "train")]
    description = _content_checkpoint(tmp_path / "copied.pt", ["holiday"] + [file.stem for file in train_files],
                                      [copy, *train_files])
    with pytest.raises(TestOverlapError, match="1 test videos .*0 by name, 1 same content, 0 same source video"):
        check_pretraining_overlap(description, split_lists, allow=False)
    report = check_pretraining_overlap(description, split_lists, allow=True)
    _assert_no_names(report, description)
    assert report["content_checked"] is True and report["test_overlap_examples"] == [test_stem]
    assert "; 0 by name, 1 same content, 0 same source video **(allowed" in overlap_text(report)[2]
    copy.write_bytes(b"another video\n")  # the same name, other bytes: nothing seen
    clean = _content_checkpoint(tmp_path / "clean.pt", ["holiday"], [copy])
    report = check_pretraining_overlap(clean, split_lists, allow=False)
    assert report["test_overlap"] == 0 and report["content_checked"] is True
    assert "content not checked" not in overlap_text(report)[2]


def test_an_old_checkpoint_without_hashes_is_reported_not_refused(hmdb, tmp_path):
    """Written before distill-3: matched by name and source group, and every report says content was not checked."""
    train_stems = _stems(hmdb, 1, "train")
    description = resolve_init(str(_checkpoint(tmp_path / "old.pt", {}, train_stems, "hmdb51"))).description
    report = check_pretraining_overlap(description, _split_lists(hmdb), allow=False)
    assert report["test_overlap"] == 0 and report["content_checked"] is False
    expected = "0 (split 1: 0); 0 by name, 0 same content, 0 same source video; content not checked"
    assert overlap_text(report)[2] == expected
