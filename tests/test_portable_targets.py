"""A targets folder says nothing of where it was made (issue 12 item 4): moved to another folder or machine,
it verifies, reads the same and distills to the same run."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import write_test_pattern_videos

from distinit.distill.config import DistillConfig
from distinit.distill.targets_folder import targets_fingerprint
from distinit.distill.train import run_key as distill_run_key, train
from distinit.extract.config import ExtractConfig
from distinit.extract.run import finalize, run_extraction
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.shards import TargetStore, read_manifest, verify


def _write_videos(folder: Path) -> None:
    write_test_pattern_videos(folder)
    (folder / "z_empty.mp4").write_bytes(b"")  # skipped: its path is stored in a shard and in the manifest


def _distill(**overrides) -> tuple[str, dict[str, torch.Tensor]]:
    """One epoch of a tiny student on targets/folder (its `latest`), from the current folder: (run key, weights)."""
    values = dict(targets="targets/folder", out="runs", student="r2plus1d_18", width="tiny", frames=4, stride=2,
                  short_side=32, crop=32, batch_size=2, epochs=1, val_fraction=0.25, workers=0, optimizer="adamw",
                  lr=2e-3, warmup_steps=1, deterministic=True, seed=5)
    result = train(DistillConfig(**{**values, **overrides}), show_progress=False)
    return result.run_dir.name, torch.load(result.run_dir / "checkpoint-last.pt", weights_only=False)["model"]


def _rows(targets_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    with TargetStore(targets_dir) as store:
        return {video_id: store.rows_for_video(video_id) for video_id in store.video_ids()}


def test_a_targets_folder_moved_elsewhere_verifies_and_distills_identically(tmp_path, monkeypatch):
    here, there, elsewhere = tmp_path / "here", tmp_path / "there", tmp_path / "elsewhere"
    _write_videos(here / "videos")
    monkeypatch.chdir(here)
    report = run_extraction(ExtractConfig(data="folder", root="videos", out="targets", shard_count=2, workers=0,
                                          max_frames_per_video=2, max_failure_rate=0.5), show_progress=False)
    targets_dir = here / report.targets_dir
    manifest = read_manifest(targets_dir)
    assert "out" not in manifest["config"] and manifest["extra"]["videos_root"] == "videos"
    assert [entry["path"] for entry in manifest["skipped"]] == ["z_empty.mp4"]
    for path in targets_dir.iterdir():  # the manifest, the videos list, every shard
        if path.name != "provenance.json":  # which records the run as given, --out included
            assert str(tmp_path).encode() not in path.read_bytes(), path.name
    rows = _rows(targets_dir)
    run_key, weights = _distill()

    # Moved, with the dataset, to another folder (on this machine or another): the same run, found from there.
    there.mkdir()
    for name in ("targets", "videos"):
        (here / name).rename(there / name)
    monkeypatch.chdir(there)
    moved = there / report.targets_dir
    assert verify(moved) == []
    moved_rows = _rows(moved)
    assert moved_rows.keys() == rows.keys()
    for video_id, columns in rows.items():
        for name, values in columns.items():
            assert np.array_equal(moved_rows[video_id][name], values), (video_id, name)
    moved_key, moved_weights = _distill()
    assert moved_key == run_key
    assert moved_weights.keys() == weights.keys()
    assert all(torch.equal(moved_weights[name], weights[name]) for name in weights)

    # Without the videos beside it: one line naming the folder looked for, and how to point at them.
    elsewhere.mkdir()
    (there / "targets").rename(elsewhere / "targets")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DistinitError) as missing:
        _distill()
    message = str(missing.value)
    assert "\n" not in message and message.startswith("videos: ") and str(elsewhere) in message
    assert "pass --videos <folder> (make: DISTILL_ARGS='--videos <folder>')" in message
    assert not (elsewhere / "runs").exists()
    _, weights_by_option = _distill(videos_root=os.fspath(there / "videos"))
    assert all(torch.equal(weights_by_option[name], weights[name]) for name in weights)

    # Re-sealed from another folder with other speed options (make re-runs extract when only its key's form
    # changed: every shard is kept, the manifest rewritten): the content fingerprint, hence the run, is the same.
    monkeypatch.chdir(tmp_path)
    before = (elsewhere / report.targets_dir / "manifest.json").read_bytes()
    fingerprint = targets_fingerprint(elsewhere / report.targets_dir)
    finalize(ExtractConfig(data="folder", root=os.fspath(there / "videos"), out=os.fspath(elsewhere / "targets"),
                           shard_count=2, workers=1, max_frames_per_video=2, max_failure_rate=0.5, batch_size=3),
             elsewhere / report.targets_dir)
    assert (elsewhere / report.targets_dir / "manifest.json").read_bytes() != before
    assert targets_fingerprint(elsewhere / report.targets_dir) == fingerprint
    # Named by another path (absolute here, relative before): the same run folder.
    config = DistillConfig(targets=os.fspath(elsewhere / "targets" / "folder"), videos_root=os.fspath(there / "videos"))
    assert distill_run_key(config, fingerprint) == distill_run_key(dataclasses.replace(config, targets="targets/folder",
                                                                       videos_root=None), fingerprint)
