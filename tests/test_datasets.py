"""Dataset adapters on fixture trees laid out like the real HMDB-51, UCF-101, Kinetics, raw folders and the demo."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from dataset_fixtures import (
    HMDB_CLASSES,
    KINETICS_MISSING,
    UCF_CLASS_INDEX,
    make_demo_pool,
    make_hmdb51,
    make_kinetics,
    make_raw_folder,
    make_tiny_video,
    make_ucf101,
    write_lines,
    write_video,
)
from distinit.pipeline.datasets import ADAPTERS, load_dataset, manifest_hash, read_manifest, write_manifest
from distinit.pipeline.errors import DatasetError
from distinit.pipeline.video.binary import ffmpeg_binary


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> dict[str, Path]:
    """Real tiny clips, made once per session and copied into fixture trees."""
    folder = tmp_path_factory.mktemp("tiny_videos")
    return {extension: make_tiny_video(folder / f"tiny{extension}") for extension in (".avi", ".mp4")}


def reported(listing) -> dict:
    return {record.id: (record.label, record.class_name, record.splits) for record in listing.records}


def role_counts(listing, split: str) -> Counter:
    return Counter(record.role(split) for record in listing.records)


def assert_decodes(path: Path) -> None:
    result = subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True)
    assert result.returncode == 0, result.stderr


def assert_real_videos(listing, source: Path) -> None:
    assert listing.records
    for record in listing.records:
        assert Path(record.path).read_bytes() == source.read_bytes()
    assert_decodes(listing.records[0].path)


# --- HMDB-51 -------------------------------------------------------------------------------------


def test_hmdb51_roles_labels_and_order_for_all_three_splits(tmp_path):
    layout = make_hmdb51(tmp_path)
    listing = load_dataset("hmdb51", layout.root)
    assert reported(listing) == layout.expected
    assert listing.class_names == list(HMDB_CLASSES)
    for split in ("1", "2", "3"):
        # per class and split: 3 train, 2 test, 1 unused
        assert role_counts(listing, split) == {"train": 9, "test": 6, "unused": 3}
    ids = [record.id for record in listing.records]
    assert ids == sorted(ids) and ids == [record.id for record in load_dataset("hmdb51", layout.root).records]
    assert ids[0] == "brush_hair/Clip_00_brush_hair_u_nm_np1_fr_med_0"
    assert listing.records[0].path == layout.root / "brush_hair" / "Clip_00_brush_hair_u_nm_np1_fr_med_0.avi"
    assert listing.missing == []


def test_hmdb51_real_videos(tmp_path, tiny_videos):
    layout = make_hmdb51(tmp_path, tiny_videos[".avi"])
    listing = load_dataset("hmdb51", layout.root, splits_dir=layout.splits_dir)
    assert reported(listing) == layout.expected
    assert_real_videos(listing, tiny_videos[".avi"])


def test_hmdb51_split_folder_inside_root_is_found_and_is_not_a_class(tmp_path):
    layout = make_hmdb51(tmp_path, splits_location="inside")
    write_video(layout.root / "no_split_files" / "x.avi")
    listing = load_dataset("hmdb51", layout.root)
    assert listing.class_names == list(HMDB_CLASSES)
    assert reported(listing) == layout.expected


def test_hmdb51_unlisted_video_is_kept_as_unused(tmp_path, caplog):
    layout = make_hmdb51(tmp_path, unlisted_per_class=1)
    with caplog.at_level(logging.INFO, logger="distinit.pipeline.datasets.hmdb51"):
        listing = load_dataset("hmdb51", layout.root)
    assert reported(listing) == layout.expected
    assert role_counts(listing, "2") == {"train": 9, "test": 6, "unused": 6}
    assert "3 videos are in no split file" in caplog.text


def test_hmdb51_listed_video_missing_names_file_and_line(tmp_path):
    layout = make_hmdb51(tmp_path)
    (layout.root / "cartwheel" / "Clip_02_cartwheel_u_nm_np1_fr_med_2.avi").unlink()
    with pytest.raises(DatasetError, match=r"cartwheel_test_split1\.txt:3: video .*Clip_02_cartwheel.* not found"):
        load_dataset("hmdb51", layout.root)


@pytest.mark.parametrize("bad_line", ["Clip_00_ride_bike_u_nm_np1_fr_med_0.avi 3", "only_a_name.avi", "a.avi 1 extra"])
def test_hmdb51_malformed_line_names_file_and_line(tmp_path, bad_line):
    layout = make_hmdb51(tmp_path)
    split_file = layout.splits_dir / "ride_bike_test_split2.txt"
    lines = split_file.read_text().splitlines()
    write_lines(split_file, lines[:4] + ["", bad_line] + lines[4:])  # the blank line is skipped, but counted
    with pytest.raises(DatasetError, match=r"ride_bike_test_split2\.txt:6: expected '<video>.avi <0\|1\|2>'"):
        load_dataset("hmdb51", layout.root)


def test_hmdb51_missing_split_file_of_one_class_is_named(tmp_path):
    layout = make_hmdb51(tmp_path)
    (layout.splits_dir / "cartwheel_test_split3.txt").unlink()
    with pytest.raises(DatasetError, match=r"cartwheel_test_split3\.txt: split file missing"):
        load_dataset("hmdb51", layout.root)


def test_hmdb51_class_with_split_files_but_no_folder_is_named(tmp_path):
    layout = make_hmdb51(tmp_path)
    shutil.rmtree(layout.root / "ride_bike")
    message = r"ride_bike: class folder not found \(listed by .*ride_bike_test_split1\.txt\)"
    with pytest.raises(DatasetError, match=message):
        load_dataset("hmdb51", layout.root)


def test_hmdb51_only_splits_present_are_reported(tmp_path):
    layout = make_hmdb51(tmp_path)
    for path in layout.splits_dir.glob("*_test_split[23].txt"):
        path.unlink()
    listing = load_dataset("hmdb51", layout.root)
    assert all(set(record.splits) == {"1"} for record in listing.records)
    assert role_counts(listing, "1") == {"train": 9, "test": 6, "unused": 3}


def test_hmdb51_missing_splits_folder_says_pass_splits(tmp_path):
    layout = make_hmdb51(tmp_path)
    shutil.rmtree(layout.splits_dir)
    with pytest.raises(DatasetError, match=r"no HMDB-51 split folder found .*; pass --splits DIR$"):
        load_dataset("hmdb51", layout.root)
    with pytest.raises(DatasetError, match=r"nowhere: HMDB-51 split folder not found; pass --splits DIR"):
        load_dataset("hmdb51", layout.root, splits_dir=tmp_path / "nowhere")


# --- UCF-101 -------------------------------------------------------------------------------------


def test_ucf101_roles_labels_and_order_for_all_three_splits(tmp_path):
    layout = make_ucf101(tmp_path)
    assert b"\r\n" in (layout.splits_dir / "trainlist01.txt").read_bytes()  # the real files are CRLF
    listing = load_dataset("ucf101", layout.root)
    assert reported(listing) == layout.expected
    assert listing.class_names == list(UCF_CLASS_INDEX)  # classInd order, not sorted
    assert {record.class_name: record.label for record in listing.records} == {
        "Basketball": 0,
        "ApplyEyeMakeup": 1,
        "HandstandPushups": 2,
    }
    for split in ("1", "2", "3"):
        # 3 classes x 4 groups x 2 clips; split k tests on group k
        assert role_counts(listing, split) == {"train": 18, "test": 6}
    ids = [record.id for record in listing.records]
    assert ids == sorted(ids) and ids[0] == "v_ApplyEyeMakeup_g01_c01"


def test_ucf101_case_mismatch_uses_the_file_on_disk(tmp_path):
    layout = make_ucf101(tmp_path)
    # testlist01 says v_HandstandPushups_g01_c01.avi; the file on disk is v_HandStandPushups_g01_c01.avi
    assert "HandstandPushups/v_HandstandPushups_g01_c01.avi" in (layout.splits_dir / "testlist01.txt").read_text()
    listing = load_dataset("ucf101", layout.root)
    record = next(record for record in listing.records if record.id.lower() == "v_handstandpushups_g01_c01")
    assert record.id == "v_HandStandPushups_g01_c01"
    assert record.path == layout.root / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"
    assert record.splits == {"1": "test", "2": "train", "3": "train"}


def test_ucf101_class_folder_case_mismatch(tmp_path):
    layout = make_ucf101(tmp_path, newline="\n")
    (layout.root / "ApplyEyeMakeup").rename(layout.root / "Applyeyemakeup")
    listing = load_dataset("ucf101", layout.root)
    assert reported(listing) == layout.expected
    assert (layout.root / "Applyeyemakeup") in {Path(record.path).parent for record in listing.records}


def test_ucf101_real_videos_and_split_folder_inside_root(tmp_path, tiny_videos):
    layout = make_ucf101(tmp_path, tiny_videos[".avi"], splits_location="inside")
    listing = load_dataset("ucf101", layout.root)
    assert reported(listing) == layout.expected
    assert_real_videos(listing, tiny_videos[".avi"])


def test_ucf101_trainlist_label_must_agree_with_classind(tmp_path):
    layout = make_ucf101(tmp_path)
    path = layout.splits_dir / "trainlist02.txt"
    path.write_bytes(path.read_bytes().replace(b"v_Basketball_g01_c02.avi 1", b"v_Basketball_g01_c02.avi 2"))
    message = r"trainlist02\.txt:2: label 2 disagrees with classInd\.txt \(1 Basketball\)"
    with pytest.raises(DatasetError, match=message):
        load_dataset("ucf101", layout.root)


def test_ucf101_listed_video_missing_names_file_and_line(tmp_path):
    layout = make_ucf101(tmp_path)
    (layout.root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g03_c01.avi").unlink()
    with pytest.raises(DatasetError, match=r"trainlist01\.txt:9: video .*v_ApplyEyeMakeup_g03_c01\.avi not found"):
        load_dataset("ucf101", layout.root)


@pytest.mark.parametrize(
    "list_name, bad_line, message",
    [
        ("testlist01.txt", "Basketball/v_Basketball_g01_c01.avi 1 2", "expected '<Class>/<video>.avi'"),
        ("trainlist01.txt", "Basketball/v_Basketball_g02_c01.avi", "expected '<Class>/<video>.avi <id>'"),
        ("trainlist01.txt", "v_Basketball_g02_c01.avi 1", "expected '<Class>/<video>.avi'"),
        ("trainlist01.txt", "Volleyball/v_Volleyball_g02_c01.avi 1", "class 'Volleyball' is not in classInd.txt"),
    ],
)
def test_ucf101_malformed_line_names_file_and_line(tmp_path, list_name, bad_line, message):
    layout = make_ucf101(tmp_path)
    path = layout.splits_dir / list_name
    write_lines(path, ["", bad_line] + path.read_text().splitlines(), "\r\n")
    with pytest.raises(DatasetError, match=rf"{list_name}:2: {message}"):
        load_dataset("ucf101", layout.root)


def test_ucf101_bad_class_index_and_missing_lists(tmp_path):
    layout = make_ucf101(tmp_path)
    (layout.splits_dir / "testlist02.txt").unlink()
    with pytest.raises(DatasetError, match=r"testlist02\.txt: split list missing"):
        load_dataset("ucf101", layout.root)
    write_lines(layout.splits_dir / "classInd.txt", ["1 Basketball", "3 ApplyEyeMakeup"])
    with pytest.raises(DatasetError, match=r"classInd\.txt: class ids must run 1\.\.2 without gaps"):
        load_dataset("ucf101", layout.root)
    (layout.splits_dir / "classInd.txt").unlink()
    with pytest.raises(DatasetError, match=r"classInd\.txt: classInd\.txt not found; pass --splits DIR"):
        load_dataset("ucf101", layout.root)
    shutil.rmtree(layout.splits_dir)
    with pytest.raises(DatasetError, match=r"no UCF-101 split folder found .*ucfTrainTestlist.*; pass --splits DIR"):
        load_dataset("ucf101", layout.root)


# --- Kinetics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout_name", ["label", "flat"])
def test_kinetics_both_layouts_count_missing_clips(tmp_path, layout_name, caplog):
    layout = make_kinetics(tmp_path, layout_name)
    with caplog.at_level(logging.INFO, logger="distinit.pipeline.datasets.kinetics"):
        listing = load_dataset("kinetics", layout.root)
    assert reported(listing) == layout.expected
    assert listing.class_names == ["abseiling", "playing guitar", "zumba"]  # zumba: its only clip is missing
    assert role_counts(listing, "1") == {"train": 4, "val": 2, "test": 2}
    assert {item["id"] for item in listing.missing} == KINETICS_MISSING
    assert all("reason" in item for item in listing.missing)
    assert "10 clips listed, 8 found, 2 missing" in caplog.text
    by_id = {record.id: record for record in listing.records}
    assert by_id["-0Y1Xt0gQmE_000010_000020"].label == 0  # written "10.0,20.0" in the CSV
    assert Path(by_id["Zz9_yY8-xX7_000000_000010"].path).suffix == ".webm"
    assert Path(by_id["valClipBBBB_000007_000017"].path).suffix == ".mkv"
    assert by_id["testClipAAA_000002_000012"].label is None


def test_kinetics_real_videos_with_explicit_annotation_file(tmp_path, tiny_videos):
    layout = make_kinetics(tmp_path, "label", tiny_videos[".mp4"])
    listing = load_dataset("kinetics", layout.root, annotations=layout.root / "annotations" / "train.csv")
    assert [record.role("1") for record in listing.records] == ["train"] * 4
    assert_real_videos(listing, tiny_videos[".mp4"])


@pytest.mark.parametrize("where", ["beside", "in_root"])
def test_kinetics_default_annotation_locations(tmp_path, where):
    layout = make_kinetics(tmp_path, "flat")
    target = tmp_path / "annotations" if where == "beside" else layout.root
    for path in sorted((layout.root / "annotations").iterdir()):
        target.mkdir(exist_ok=True)
        path.rename(target / path.name)
    (layout.root / "annotations").rmdir()
    assert reported(load_dataset("kinetics", layout.root)) == layout.expected
    for csv_file in target.glob("*.csv"):
        csv_file.unlink()
    with pytest.raises(DatasetError, match=r"no annotation CSVs in .*; pass --annotations PATH"):
        load_dataset("kinetics", layout.root)


@pytest.mark.parametrize(
    "lines, message",
    [
        (["label,youtube_id,time_start,split", "a,b,1,train"], r"train\.csv:1: header .* \(missing: time_end"),
        (["label,youtube_id,time_start,time_end,split", "", "a,abc,1,11"], r"train\.csv:3: expected 5 fields, got 4"),
        (["label,youtube_id,time_start,time_end,split", "a,abc,1.5,11,train"], r"train\.csv:2: time '1\.5'"),
        (["label,youtube_id,time_start,time_end,split", "a,abc,1,11,holdout"], r"train\.csv:2: split 'holdout'"),
        (["label,youtube_id,time_start,time_end,split", "a,,1,11,train"], r"train\.csv:2: empty youtube_id"),
    ],
)
def test_kinetics_malformed_csv_names_file_and_line(tmp_path, lines, message):
    layout = make_kinetics(tmp_path, "flat")
    write_lines(layout.root / "annotations" / "train.csv", lines)
    with pytest.raises(DatasetError, match=message):
        load_dataset("kinetics", layout.root)


# --- Raw folder and demo -------------------------------------------------------------------------


def test_folder_lists_videos_recursively_and_skips_hidden_and_other_files(tmp_path, tiny_videos):
    layout = make_raw_folder(tmp_path)
    os.symlink(layout.root / "sub", layout.root / "sub" / "deeper" / "loop")  # a link back up the tree
    write_video(tmp_path / "elsewhere" / "linked_clip.mp4")
    os.symlink(tmp_path / "elsewhere", layout.root / "linked")  # a link to another folder is followed
    listing = load_dataset("folder", layout.root)
    ids = [record.id for record in listing.records]
    assert ids == sorted([*layout.expected, "linked/linked_clip"])
    assert all(record.label is None and record.splits == {} for record in listing.records)
    real = make_raw_folder(tmp_path / "real", tiny_videos[".mp4"])
    assert_real_videos(load_dataset("folder", real.root), tiny_videos[".mp4"])


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no video files .*; check --root"):
        load_dataset("folder", tmp_path / "empty")
    write_video(tmp_path / "twins" / "a.mp4")
    write_video(tmp_path / "twins" / "a.avi")
    with pytest.raises(DatasetError, match=r"share the id 'a'"):
        load_dataset("folder", tmp_path / "twins")


def test_demo_pool_and_its_labeled_actions(tmp_path, tiny_videos):
    layout = make_demo_pool(tmp_path, tiny_videos[".mp4"])
    listing = load_dataset("demo", layout.root)
    assert reported(listing) == layout.expected
    assert_real_videos(listing, tiny_videos[".mp4"])
    actions = load_dataset("hmdb51", layout.root / "actions" / "videos")  # finds ../testTrainMulti_7030_splits
    assert actions.class_names == list(HMDB_CLASSES) and len(actions.records) == 18
    shutil.rmtree(layout.root / "pool")
    with pytest.raises(DatasetError, match=r"pool: demo clip pool not found; run `make demo-data`"):
        load_dataset("demo", layout.root)


# --- Shared behaviour ----------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'hmdb'; known: demo, folder, hmdb51, kinetics, ucf101"):
        load_dataset("hmdb", tmp_path)
    with pytest.raises(DatasetError, match=r"nowhere: dataset root not found"):
        load_dataset("ucf101", tmp_path / "nowhere")
    assert sorted(ADAPTERS) == ["demo", "folder", "hmdb51", "kinetics", "ucf101"]


@pytest.mark.parametrize(
    "name, option, flag",
    [
        ("hmdb51", "annotations", "--annotations"),
        ("ucf101", "annotations", "--annotations"),
        ("kinetics", "splits_dir", "--splits"),
        ("folder", "splits_dir", "--splits"),
        ("folder", "annotations", "--annotations"),
        ("demo", "splits_dir", "--splits"),
    ],
)
def test_option_an_adapter_does_not_take_is_an_error(tmp_path, name, option, flag):
    with pytest.raises(DatasetError, match=rf"dataset '{name}' does not take {flag}"):
        load_dataset(name, tmp_path, **{option: tmp_path})


def test_manifest_round_trip_and_content_hash(tmp_path):
    layout = make_hmdb51(tmp_path)
    listing = load_dataset("hmdb51", layout.root)
    digest = write_manifest(listing, tmp_path / "hmdb51.jsonl")
    assert (tmp_path / "hmdb51.jsonl.sha256").read_text().split()[0] == digest == manifest_hash(listing)
    records = read_manifest(tmp_path / "hmdb51.jsonl", layout.root)
    assert [(r.id, r.label, r.class_name, r.splits) for r in records] == [
        (r.id, r.label, r.class_name, r.splits) for r in listing.records
    ]
    assert [Path(r.path).resolve() for r in records] == [Path(r.path).resolve() for r in listing.records]
    assert manifest_hash(load_dataset("hmdb51", layout.root)) == digest

    touched = listing.records[4].path
    os.utime(touched, (1_000_000_000, 1_000_000_000))
    assert manifest_hash(load_dataset("hmdb51", layout.root)) == digest  # a touch is not a change

    Path(touched).write_bytes(b"content of another length than the placeholder\n")
    resized = manifest_hash(load_dataset("hmdb51", layout.root))
    assert resized != digest

    write_video(layout.root / "cartwheel" / "new_video.avi")
    assert manifest_hash(load_dataset("hmdb51", layout.root)) not in {digest, resized}


def test_manifest_paths_of_linked_videos_under_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "raw" / "a.mp4")
    write_video(tmp_path / "elsewhere" / "b.mp4")
    os.symlink(tmp_path / "elsewhere", tmp_path / "raw" / "linked")
    listing = load_dataset("folder", "raw")
    write_manifest(listing, "raw.jsonl")
    records = read_manifest("raw.jsonl", "raw")
    assert [(record.id, str(record.path)) for record in records] == [
        ("a", "raw/a.mp4"),
        ("linked/b", "raw/linked/b.mp4"),
    ]
    assert all(Path(record.path).is_file() for record in records)


def test_kinetics_finds_copies_named_by_bare_youtube_id(tmp_path):
    """`{youtube_id}.mp4`, as several download tools save a clip, in either layout; the record keeps the clip's full
    id. A bare name two clips of the CSVs share (the same YouTube video cut twice) could be either: not taken."""
    layout = make_kinetics(tmp_path, "label")
    renamed = {}
    for path in sorted(layout.root.rglob("*_0000*")):
        if path.suffix == ".mp4" and path.stem in layout.expected:
            youtube_id = path.stem.rsplit("_", 2)[0]
            path.rename(path.with_name(youtube_id + path.suffix))
            renamed[path.stem] = youtube_id
    assert len(renamed) >= 4
    listing = load_dataset("kinetics", layout.root)
    assert reported(listing) == layout.expected  # every clip found, under its full id
    by_id = {record.id: record for record in listing.records}
    assert all(Path(by_id[clip].path).stem == youtube_id for clip, youtube_id in renamed.items())
    # The same YouTube video listed as a second clip: its bare-named copy could be either clip, so neither takes it.
    train_csv = layout.root / "annotations" / "train.csv"
    rows = {line.split(",")[1]: line.split(",")[0] for line in train_csv.read_text().splitlines()[1:]}
    clip, youtube_id = next((clip, youtube_id) for clip, youtube_id in renamed.items() if youtube_id in rows)
    label = rows[youtube_id]
    with open(train_csv, "a") as csv_file:
        csv_file.write(f"{label},{youtube_id},100,110,train\n")
    again = load_dataset("kinetics", layout.root)
    assert clip not in {record.id for record in again.records}
    assert {clip, f"{youtube_id}_000100_000110"} <= {item["id"] for item in again.missing}
