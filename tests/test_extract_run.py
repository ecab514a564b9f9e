"""The stage-one runner end to end on a tiny folder dataset: shards, manifest, skips, resume, --shard parts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import distinit.extract.run as run_module
from distinit.extract.config import ExtractConfig, parse_shard_part
from distinit.extract.run import ExtractionError, prepare, run_extraction, finalize
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file
from distinit.distill.data import TargetClipDataset
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.shards import LAYOUTS_NAME, TargetStore, inspect, read_manifest, stored_layouts, verify
from distinit.pipeline.video.binary import ffmpeg_binary

GOOD_VIDEOS = ("a_walk", "b_pan", "c_zoom", "d_still")


def _write_test_video(path: Path, pattern: str, seconds: float) -> None:
    command = [
        ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=64x48:rate=10", "-t", str(seconds),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-threads", "1", str(path),
    ]
    subprocess.run(command, check=True, timeout=60)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for number, name in enumerate(GOOD_VIDEOS):
        pattern = ("testsrc", "testsrc2", "smptebars", "rgbtestsrc")[number]
        _write_test_video(root / f"{name}.mp4", pattern, seconds=1.5 + 0.5 * number)
    (root / "e_empty.mp4").write_bytes(b"")
    (root / "f_text.mp4").write_text("this is not a video\n")
    return root


def _config(root: Path, out: Path, **overrides) -> ExtractConfig:
    values = dict(data="folder", root=str(root), out=str(out), shard_count=2, workers=0, batch_size=8, max_failure_rate=0.5)
    values.update(overrides)
    return ExtractConfig(**values)


def _shard_hashes(targets_dir: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(targets_dir.glob("shard-*.h5"))}


def test_full_run_writes_verified_shards_and_lists_bad_videos(video_folder, tmp_path):
    report = run_extraction(_config(video_folder, tmp_path), show_progress=False)
    assert verify(report.targets_dir) == []
    manifest = read_manifest(report.targets_dir)
    skipped = {entry["video_id"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"e_empty", "f_text"}
    assert all(reason for reason in skipped.values())
    store = TargetStore(report.targets_dir)
    assert sorted(store.video_ids()) == sorted(GOOD_VIDEOS)
    assert sorted(stored_layouts(report.targets_dir)) == sorted(GOOD_VIDEOS)  # skipped videos have none
    # 2 teacher frames per second at interval centres: 1.5 s -> 3 frames, 2 s -> 4, 2.5 s -> 5, 3 s -> 6.
    assert len(store) == 3 + 4 + 5 + 6
    rows = store.rows_for_video("c_zoom")
    assert list(rows["t_seconds"]) == [0.25, 0.75, 1.25, 1.75, 2.25]
    assert list(rows["frame_index"]) == [2, 7, 12, 17, 22]
    assert rows["imagenet-efficientnet-lite0/logits"].shape == (5, 1000)
    # Lite0 saw the centre 224 of the 4:3 frames decoded for it at 342 x 256: columns 59..283, rows 16..240.
    boxes = store.view_boxes_for_video("c_zoom")["imagenet-efficientnet-lite0"]
    np.testing.assert_array_equal(boxes, np.float32([[59 / 342, 16 / 256, 283 / 342, 240 / 256]] * 5))
    assert (report.targets_dir.parent / "latest").read_text().strip() == report.stage_key
    assert (report.targets_dir / "provenance.json").is_file()


def test_too_many_failures_exit_non_zero_after_writing(video_folder, tmp_path):
    with pytest.raises(ExtractionError, match=r"2 of 6 videos failed"):
        run_extraction(_config(video_folder, tmp_path, max_failure_rate=0.05), show_progress=False)
    targets_dir = next((tmp_path / "folder").glob("*/manifest.json")).parent
    assert verify(targets_dir) == []
    assert read_manifest(targets_dir)["total_rows"] == 18


def test_resume_after_crash_mid_shard_is_byte_identical(video_folder, tmp_path, monkeypatch):
    reference = run_extraction(_config(video_folder, tmp_path / "reference"), show_progress=False)
    calls = {"count": 0}
    real_teach = run_module.teach

    def crashing_teach(teachers, videos):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_teach(teachers, videos)

    monkeypatch.setattr(run_module, "teach", crashing_teach)
    with pytest.raises(KeyboardInterrupt):
        run_extraction(_config(video_folder, tmp_path / "crashed"), show_progress=False)
    monkeypatch.setattr(run_module, "teach", real_teach)
    targets_dir = tmp_path / "crashed" / "folder" / reference.stage_key
    # A SIGKILL leaves a half-written temp file behind; the re-run must redo the shard, not trust it.
    (targets_dir / ".shard-00001-of-00002.h5.99999.tmp").write_bytes(b"half a shard")
    resumed = run_extraction(_config(video_folder, tmp_path / "crashed"), show_progress=False)
    assert _shard_hashes(resumed.targets_dir) == _shard_hashes(reference.targets_dir)
    assert not list(targets_dir.glob(".*.tmp"))
    assert verify(targets_dir) == []
    again = run_extraction(_config(video_folder, tmp_path / "crashed"), show_progress=False)
    assert again.shards_written == [] and again.shards_skipped == [0, 1]


def test_shard_parts_then_finalize_equal_one_full_run(video_folder, tmp_path):
    full = run_extraction(_config(video_folder, tmp_path / "full"), show_progress=False)
    parts_config = _config(video_folder, tmp_path / "parts", workers=2)
    first = run_extraction(parts_config, (0, 2), show_progress=False)
    assert first.manifest is None and first.shards_written == [0]
    run_extraction(parts_config, (1, 2), show_progress=False)
    finalize(parts_config, prepare(parts_config).targets_dir)
    assert _shard_hashes(first.targets_dir) == _shard_hashes(full.targets_dir)
    assert read_manifest(first.targets_dir)["shards"] == read_manifest(full.targets_dir)["shards"]
    assert (first.targets_dir / LAYOUTS_NAME).read_bytes() == (full.targets_dir / LAYOUTS_NAME).read_bytes()
    assert verify(first.targets_dir) == []


def test_shard_part_parsing():
    assert parse_shard_part("1/4") == (1, 4)
    assert parse_shard_part(None) == (0, 1)
    for bad in ("3/2", "2", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard_part(bad)


def test_cli_extract_verify_inspect(video_folder, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [
        "extract", "--data", "folder", "--root", str(video_folder), "--out", str(tmp_path), "--shard-count", "2",
        "--workers", "0", "--max-failure-rate", "0.5", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    targets_dir = next((tmp_path / "folder").glob("*/manifest.json")).parent
    assert runner.invoke(main, ["verify", str(targets_dir)]).exit_code == 0
    inspected = runner.invoke(main, ["inspect", str(targets_dir), "--video", "a_walk"])
    assert inspected.exit_code == 0 and "t=0.25s" in inspected.output
    bad = runner.invoke(main, ["extract", "--data", "folder", "--root", str(video_folder), "--shard", "3/2"])
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1 and "3/2" in bad.output
    unknown = runner.invoke(main, ["extract", "--data", "folder", "--root", str(video_folder), "--teachers", "nope"])
    assert unknown.exit_code != 0 and "nope" in unknown.output and len(unknown.output.strip().splitlines()) == 1


def test_other_shard_count_in_the_same_folder_is_refused(video_folder, tmp_path):
    run_extraction(_config(video_folder, tmp_path, shard_count=2), show_progress=False)
    with pytest.raises(Exception, match=r"--shard-count 2, not 3"):
        run_extraction(_config(video_folder, tmp_path, shard_count=3), show_progress=False)


def test_pose_teacher_stores_coordinates_that_stage_two_draws_over_the_crop(video_folder, tmp_path):
    options = {"backend": "torchvision", "weights": "random", "person_threshold": 0.0, "min_size": 64, "max_size": 96,
               "grid": 7, "sigma": 0.5}
    config = _config(video_folder, tmp_path, teachers=("coco-keypoints",), teacher_options={"coco-keypoints": options})
    report = run_extraction(config, show_progress=False)
    assert verify(report.targets_dir) == []
    store = TargetStore(report.targets_dir)
    assert store.output_names == ["coco-keypoints/keypoints", "coco-keypoints/person_present"]
    spec = store.output_spec("coco-keypoints/keypoints")
    assert spec["kind"] == "keypoints" and spec["shape"] == [17, 3]
    assert spec["attributes"]["heatmap_grid"] == 7 and spec["attributes"]["heatmap_sigma_cells"] == 0.5
    keypoints = store.rows_for_video("a_walk")["coco-keypoints/keypoints"]  # (frames, 17, 3)
    nowhere = (keypoints[..., :2] == -1).all(axis=-1)  # nobody seen, or a keypoint without a position
    in_frame = ((keypoints[..., :2] > -0.1) & (keypoints[..., :2] < 1.1)).all(axis=-1)
    assert keypoints.shape == (3, 17, 3) and (nowhere | in_frame).all()
    # A detector sees the whole frame, and says so: the crop of stage two is not bounded by it.
    assert (store.view_boxes_for_video("a_walk")["coco-keypoints"] == np.float32([0, 0, 1, 1])).all()
    assert any("a person's keypoints in " in line and "7x7 heatmaps" in line for line in inspect(report.targets_dir))
    clip = ClipSpec(frames=2, stride=2, short_side=32, crop=24)
    sample = TargetClipDataset(report.targets_dir, ["a_walk"], clip, train=False)[0]
    heatmaps = sample["targets"]["coco-keypoints/heatmaps"]
    assert heatmaps.shape == (17, 7, 7) and "coco-keypoints/keypoints" not in sample["targets"]
    # Each map is a distribution over the crop, or empty for a keypoint outside it.
    sums = heatmaps.sum(dim=(1, 2))
    assert (((sums - 1).abs() < 1e-4) | (sums == 0)).all()
    assert sample["targets"]["coco-keypoints/person_present"].item() == float(bool((sums > 0).any()))
