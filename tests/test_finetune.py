"""Stage three end to end on fixture HMDB-51 / UCF-101 trees of real tiny videos: finetune, linear probe,
seeds, determinism, the results files, the CLI, and one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from dataset_fixtures import PLACEHOLDER_BYTES, make_hmdb51, make_ucf101
from distinit.distill.heads import HeadSpec
from distinit.distill.students import create_student
from distinit.evaluate.ablations import FRAME_REPEATED, ORIGINAL, TIME_SHUFFLED, time_permutation
from distinit.evaluate.clips import EvaluationClips, TrainingClips, clip_starts, crop_offsets
from distinit.evaluate.config import CODE_VERSION, EvalConfig
from distinit.evaluate.finetune import _cached_run, _run_paths, predict, results_key, run_eval
from distinit.evaluate.initialization import checkpoint_path, resolve_init
from distinit.evaluate.results import RunResult
from distinit.pipeline.cli import main
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation, rgb_to_tensor
from distinit.pipeline.clips.sampler import EpochIndex, ResumableSampler
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.clips.views import crop_frames, video_to_device
from distinit.pipeline.datasets import load_dataset
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.video import read_clip
from distinit.pipeline.video.binary import ffmpeg_binary


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine torch's spinning
    threads made this file 5x slower (85 s against 16 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def video_source(tmp_path_factory) -> Path:
    """A real 2 s, 10 fps, 48x32 MPEG-4 AVI (HMDB's container and codec family)."""
    path = tmp_path_factory.mktemp("source") / "source.avi"
    command = [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=48x32:rate=10", "-t", "2",
               "-c:v", "mpeg4", "-q:v", "3", "-g", "5", str(path)]
    subprocess.run(command, check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory, video_source):
    """3 classes x 6 videos; per split 9 train, 6 test, 3 unused."""
    return make_hmdb51(tmp_path_factory.mktemp("hmdb"), video_source)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory, video_source):
    """3 classes x 8 videos; split k tests on group k: 18 train, 6 test."""
    return make_ucf101(tmp_path_factory.mktemp("ucf"), video_source)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A distill-shaped checkpoint of a tiny R(2+1)D with one teacher head (which eval must drop)."""
    torch.manual_seed(11)
    student = create_student("r2plus1d_18", [HeadSpec("imagenet-test/logits", "logits", (5,))], width="tiny")
    for module in student.modules():  # non-default statistics, so a batch norm left in train mode shows
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    path = tmp_path_factory.mktemp("distill") / "checkpoint-last.pt"
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "optimizer": {}, "step": 7,
                "epoch": 1, "rng": {}, "config": {"frames": 4, "stride": 2, "short_side": 32, "crop": 32},
                "best_val_loss": 1.0,
                "provenance": {"git_commit": None, "pretraining_videos": {"count": 1, "sha256": "0" * 64}},
                "pretraining_videos": {"count": 1, "names": ["not_a_test_video"], "sha256": "0" * 64}},
               path)
    return path


def _config(layout, out: Path, data: str = "hmdb51", **overrides) -> EvalConfig:
    values = dict(
        data=data, root=str(layout.root), splits_dir=str(layout.splits_dir), splits=(1,), init="scratch",
        student="r2plus1d_18", width="tiny", frames=4, stride=2, short_side=32, crop=32, test_clips=2, epochs=1,
        batch_size=4, optimizer="adamw", lr=3e-3, warmup_steps=1, workers=0, device="cpu", deterministic=True,
        out=str(out),
    )
    values.update(overrides)
    return EvalConfig(**values)


def _test_ids(layout, split: int) -> set[str]:
    return {video_id for video_id, (_, _, roles) in layout.expected.items() if roles[str(split)] == "test"}


def _trunk(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


# ---------------------------------------------------------------------------------------------- clips
def test_test_clips_are_spaced_uniformly_and_crops_follow_the_long_side():
    assert clip_starts(20, 6, 3) == [0, 6, 13]  # last start 13; 6.5 rounds to even
    assert clip_starts(20, 6, 1) == [6]
    assert clip_starts(4, 6, 3) == [0, 0, 0]  # shorter than a clip: start at 0, pad at the end
    assert crop_offsets(32, 48, 32, three_crop=True) == [(0, 0), (0, 8), (0, 16)]
    assert crop_offsets(48, 32, 32, three_crop=True) == [(0, 0), (8, 0), (16, 0)]
    assert crop_offsets(32, 48, 32, three_crop=False) == [(0, 8)]


def test_test_views_equal_the_clips_read_clip_decodes(hmdb):
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=32)
    dataset = EvaluationClips(listing.records[:1], clip, clips_per_video=3, three_crop=True)
    sample = dataset[0]
    assert sample["video"].shape == (9, 3, 4, 32, 32) and sample["failed"] is None
    for clip_number, start in enumerate(clip_starts(20, clip.span_frames, 3)):
        frames = read_clip(listing.records[0].path, start / 10, 4, stride=2, short_side=32)
        for crop_number, (top, left) in enumerate(crop_offsets(32, 48, 32, three_crop=True)):
            expected = rgb_to_tensor(crop_frames(frames, top, left, 32))
            assert torch.equal(sample["video"][3 * clip_number + crop_number], expected)


def test_training_clips_without_flips_are_the_same_clips_unmirrored(hmdb):
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=24)
    flipping = TrainingClips(listing.records[:6], clip, seed=5)
    plain = TrainingClips(listing.records[:6], clip, seed=5, flip=False)
    mirrored = 0
    for index in range(6):
        with_flips, without = flipping[index]["video"], plain[index]["video"]
        assert plain[index]["label"] == listing.records[index].label
        if not torch.equal(with_flips, without):
            assert torch.equal(with_flips, without.flip(-1))
            mirrored += 1
    assert 0 < mirrored < 6  # seed 5 flips some of these six clips, not all


def test_test_views_take_the_normalisation_they_are_given(hmdb):
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=24)
    imagenet = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    start, = clip_starts(20, clip.span_frames, 1)  # one test clip: the middle one
    frames = read_clip(listing.records[0].path, start / 10, 4, stride=2, short_side=32)
    (top, left), = crop_offsets(32, 48, 24, three_crop=False)
    test = EvaluationClips(listing.records[:1], clip, clips_per_video=1, three_crop=False, normalisation=imagenet)
    assert torch.equal(test[0]["video"][0], rgb_to_tensor(crop_frames(frames, top, left, 24), imagenet))
    training = TrainingClips(listing.records[:1], clip, seed=0, normalisation=imagenet)[0]["video"]
    default = TrainingClips(listing.records[:1], clip, seed=0)[0]["video"]  # the same clip at the video mean/std
    std, mean = torch.tensor(imagenet.std).view(3, 1, 1, 1), torch.tensor(imagenet.mean).view(3, 1, 1, 1)
    video_std = torch.tensor(VIDEO_NORMALISATION.std).view(3, 1, 1, 1)
    video_mean = torch.tensor(VIDEO_NORMALISATION.mean).view(3, 1, 1, 1)
    torch.testing.assert_close(training * std + mean, default * video_std + video_mean, rtol=0, atol=1e-5)


def test_temporal_ablations_are_the_test_views_reordered_in_time(hmdb):
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=32)
    dataset = EvaluationClips(listing.records[:2], clip, clips_per_video=3, three_crop=True, temporal_ablations=True)
    sample = dataset[1]
    views, ablations = sample["video"], sample["ablations"]  # views (9, 3, 4, 32, 32)
    assert set(ablations) == {TIME_SHUFFLED, FRAME_REPEATED}
    for view in range(9):
        frames = views[view]  # (3, T, H, W); the test pattern changes every frame
        assert all(not torch.equal(frames[:, a], frames[:, b]) for a in range(4) for b in range(a))
        order = time_permutation(4, 1, view // 3)  # one permutation per clip: its three crops share it
        assert sorted(order.tolist()) == [0, 1, 2, 3] and order.tolist() != [0, 1, 2, 3]
        assert torch.equal(ablations[TIME_SHUFFLED][view], frames[:, order])
        assert all(torch.equal(ablations[FRAME_REPEATED][view][:, step], frames[:, 2]) for step in range(4))
    assert "ablations" not in EvaluationClips(listing.records[:1], clip, clips_per_video=1, three_crop=False)[0]


class MeanColourClassifier(torch.nn.Module):
    """(B, 3, T, H, W) float clips -> (B, 3) logits from their mean colour."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.linear(clips.mean(dim=(2, 3, 4)))


def test_training_clips_travel_as_bytes_and_persistent_workers_draw_each_epoch(hmdb):
    """Finetuning's loader: uint8 clips, normalised on the device to the host path's values, the same clips for
    0 workers, 2 fresh workers each epoch and 2 persistent ones, told the epoch only through the sampler."""
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=24)
    imagenet = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    travelling = TrainingClips(listing.records[:6], clip, seed=4, normalisation=None)
    host = TrainingClips(listing.records[:6], clip, seed=4, normalisation=imagenet)
    for workers, persistent in ((0, False), (2, False), (2, True)):
        sampler = ResumableSampler(len(travelling), shuffle=True, seed=4)
        loader = torch.utils.data.DataLoader(travelling, batch_size=3, sampler=sampler, num_workers=workers,
                                             persistent_workers=persistent)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for batch in loader:
                assert batch["video"].dtype == torch.uint8
                expected = torch.stack([host[EpochIndex(int(index), epoch)]["video"] for index in batch["video_index"]])
                on_device = video_to_device(batch["video"], torch.device("cpu"), imagenet, flipped=batch["flipped"])
                assert torch.equal(on_device, expected)
    starts = [[travelling[EpochIndex(index, epoch)]["clip_start"] for index in range(6)] for epoch in range(2)]
    assert starts[0] != starts[1]  # each epoch its own clips


def test_test_views_normalised_on_the_device_score_as_the_host_path(hmdb):
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    clip = ClipSpec(frames=4, stride=2, short_side=32, crop=24)
    outcomes = []
    for normalisation in (None, VIDEO_NORMALISATION):
        test_set = EvaluationClips(listing.records[:3], clip, clips_per_video=2, three_crop=True,
                                   normalisation=normalisation, temporal_ablations=True)
        loader = torch.utils.data.DataLoader(test_set, batch_size=None)
        outcomes.append(predict(MeanColourClassifier(), loader, 4, contextlib.nullcontext(), torch.device("cpu"), 0,
                                False, VIDEO_NORMALISATION))
    (bytes_logits, bytes_index, _), (host_logits, host_index, _) = outcomes
    assert bytes_logits.keys() == host_logits.keys() == {ORIGINAL, TIME_SHUFFLED, FRAME_REPEATED}
    assert (bytes_index == host_index).all() and len(bytes_index) == 3 * 2 * 3
    for stream in bytes_logits:
        assert (bytes_logits[stream] == host_logits[stream]).all(), stream


# ---------------------------------------------------------------------------------------------- end to end
def test_eval_hmdb51_all_splits_from_a_checkpoint(hmdb, checkpoint, tmp_path):
    config = _config(hmdb, tmp_path / "out", splits=(1, 2, 3), init=str(checkpoint), student=None, width=None,
                     epochs=2, three_crop=True, save_weights=True)
    result = run_eval(config)
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"schema", "key", "config", "init", "dataset", "class_names", "runs", "summary", "seconds"} <= set(stored)
    assert stored["class_names"] == ["brush_hair", "cartwheel", "ride_bike"]
    assert stored["init"]["sha256"] == sha256_file(checkpoint) and stored["init"]["kind"] == "checkpoint"
    assert stored["init"]["architecture"] == {"name": "r2plus1d_18", "width": "tiny", "in_channels": 3}
    assert stored["init"]["dropped_heads"] == ["imagenet-test/logits"]
    assert [(run["split"], run["seed"]) for run in stored["runs"]] == [(1, 0), (2, 0), (3, 0)]
    assert stored["init"]["input_normalisation"] == VIDEO_NORMALISATION.to_dict()  # what it was distilled on
    for run in result.runs:
        # 9 listed for training: one source group per class (3 videos) held out for validation, never scored
        assert (run.train_videos, run.validation_videos, run.test_videos, run.test_views) == (6, 3, 6, 6 * 2 * 3)
        assert run.failed_test_videos == 0 and run.failed_videos == []
        assert run.trunk_lr_scale == 0.1  # the pretrained default
        assert set(run.ablations) == {TIME_SHUFFLED, FRAME_REPEATED}
        for scores in run.ablations.values():
            assert set(scores) == {"clip_top1", "video_top1", "video_top5"}
            assert all(0.0 <= value <= 1.0 for value in scores.values()) and scores["video_top5"] == 1.0
        assert {prediction["id"] for prediction in run.predictions} == _test_ids(hmdb, run.split)
        assert sum(map(sum, run.confusion)) == 6 and len(run.confusion) == 3
        assert [curve["epoch"] for curve in run.curves] == [1, 2]
        assert [curve["step"] for curve in run.curves] == [1, 2]  # 6 train-part videos, batches of 4: 2 dropped
        assert all(0.0 <= getattr(run, metric) <= 1.0 for metric in ("clip_top1", "video_top1", "video_top5"))
        assert run.video_top5 == 1.0  # 3 classes: every label is in the top 5
    spread = stored["summary"]["over_splits"]["video_top1"]
    assert set(spread["values"]) == {"1", "2", "3"} and spread["mean"] == pytest.approx(
        sum(run.video_top1 for run in result.runs) / 3)
    assert {"config.yaml", "provenance.json"} <= {path.name for path in (tmp_path / "out").iterdir()}
    # Full finetuning moves the trunk (the control for the linear-probe test below).
    finetuned = torch.load(tmp_path / "out" / "runs" / "split1-seed0.pt", weights_only=False)["model"]
    original = torch.load(checkpoint, weights_only=False)["model"]
    assert not torch.equal(finetuned["backbone.trunk.stem.0.weight"], original["trunk.stem.0.weight"])
    # The same command again reuses the finished runs.
    record = tmp_path / "out" / "runs" / "split2-seed0.json"
    before = record.stat().st_mtime_ns
    again = run_eval(config)
    assert record.stat().st_mtime_ns == before and again.key == result.key
    assert [run.to_dict() for run in again.runs] == [run.to_dict() for run in result.runs]
    # Fewer splits is the same key: the runs asked for are reused, and results.json summarises only them.
    fewer = run_eval(dataclasses.replace(config, splits=(2,)))
    assert fewer.key == result.key and record.stat().st_mtime_ns == before
    assert [run.split for run in fewer.runs] == [2]


def test_linear_probe_leaves_the_trunk_bit_identical(hmdb, checkpoint, tmp_path):
    config = _config(hmdb, tmp_path, init=str(checkpoint), student=None, width=None, epochs=2, linear_probe=True,
                     save_weights=True)
    run_eval(config)
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["trunk_lr_scale"] == 0.0  # frozen trunk
    saved = torch.load(tmp_path / "runs" / "split1-seed0.pt", weights_only=False)["model"]
    original = torch.load(checkpoint, weights_only=False)["model"]
    trunk_after, trunk_before = _trunk(saved, "backbone.trunk."), _trunk(original, "trunk.")
    assert trunk_after.keys() == trunk_before.keys()
    for name in trunk_before:  # weights and batch-norm statistics alike
        assert torch.equal(trunk_after[name], trunk_before[name]), name
    assert "classifier.weight" in saved and not any(key.startswith("backbone.head_modules") for key in saved)


def test_same_seed_same_results_and_seeds_report_their_spread(hmdb, tmp_path):
    both = run_eval(_config(hmdb, tmp_path / "both", seeds=(0, 1)))
    alone = run_eval(_config(hmdb, tmp_path / "alone", seeds=(0,)))
    first, repeated = both.run(1, 0).to_dict(), alone.run(1, 0).to_dict()
    for volatile in ("seconds", "curves"):
        first.pop(volatile), repeated.pop(volatile)
    assert first == repeated
    assert [curve["train_loss"] for curve in both.run(1, 0).curves] == [curve["train_loss"] for curve in alone.run(1, 0).curves]
    assert both.run(1, 0).curves[0]["train_loss"] != both.run(1, 1).curves[0]["train_loss"]
    assert set(both.summary["over_seeds"]["clip_top1"]["values"]) == {"0", "1"}
    assert both.key == alone.key  # seeds choose which runs to make; each run is stored by (split, seed)


def test_cli_eval_ucf101_scratch_all_splits(ucf, tmp_path):
    arguments = ["eval", "--data", "ucf101", "--root", str(ucf.root), "--splits-dir", str(ucf.splits_dir),
                 "--splits", "1,2,3", "--init", "scratch", "--width", "tiny", "--frames", "4", "--short-side", "32",
                 "--crop", "32", "--test-clips", "2", "--epochs", "1", "--batch-size", "6", "--workers", "0",
                 "--device", "cpu", "--out", str(tmp_path), "--no-progress", "--set", "temporal_ablations=false"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "over splits" in result.output and str(tmp_path / "results.json") in result.output
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["class_names"] == ["Basketball", "ApplyEyeMakeup", "HandstandPushups"]
    assert stored["init"]["kind"] == "scratch" and stored["config"]["lr_trunk_scale"] is None
    for run in stored["runs"]:
        assert (run["train_videos"], run["validation_videos"], run["test_videos"]) == (12, 6, 6)  # groups held out
        assert run["trunk_lr_scale"] == 1.0 and run["ablations"] == {}
        assert {prediction["id"] for prediction in run["predictions"]} == _test_ids(ucf, run["split"])


def test_eval_from_an_inflated_2d_network(hmdb, tmp_path):
    pytest.importorskip("distinit.evaluate.inflate")
    result = run_eval(_config(hmdb, tmp_path, init="inflated:resnet18:random", student=None, width=None, test_clips=1))
    assert result.init["kind"] == "inflated" and result.init["architecture"]["name"] == "resnet18_3d"
    assert result.init["input_normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert result.run(1, 0).test_videos == 6


def test_failed_test_video_counts_as_wrong(hmdb, tmp_path):
    shutil.copytree(hmdb.root.parent, tmp_path / "data")
    root, splits_dir = tmp_path / "data" / hmdb.root.name, tmp_path / "data" / hmdb.splits_dir.name
    listing = load_dataset("hmdb51", root, splits_dir=splits_dir)
    broken = next(record for record in listing.records if record.role(1) == "test")
    broken.path.write_bytes(PLACEHOLDER_BYTES)  # listed in the test list, does not decode
    config = _config(hmdb, tmp_path / "out", root=str(root), splits_dir=str(splits_dir))
    run = run_eval(config).run(1, 0)
    assert run.failed_videos == [str(broken.path)] and run.failed_test_videos == 1
    assert (run.test_videos, run.test_views) == (6, 6 * 2)  # the whole test list, 2 views per video
    assert broken.id not in {prediction["id"] for prediction in run.predictions} and len(run.predictions) == 5
    right = sum(prediction["predicted"] == prediction["label"] for prediction in run.predictions)
    assert run.video_top1 == right / 6
    assert run.video_top5 == 5 / 6  # 3 classes: every decoded video is right in the top 5, the failed one is not
    assert round(run.clip_top1 * 12) <= 10 and run.clip_top1 * 12 == pytest.approx(round(run.clip_top1 * 12))
    for scores in run.ablations.values():  # the ablations are scored over the same test list
        assert scores["video_top5"] == 5 / 6 and scores["clip_top1"] <= 10 / 12


def test_runs_of_older_code_or_another_normalisation_are_not_reused(tmp_path, monkeypatch):
    config = _config(SimpleNamespace(root="unused", splits_dir="unused"), tmp_path)
    initialization = resolve_init("scratch", student="r2plus1d_18", width="tiny")
    key = results_key(config, "manifest", initialization)
    renormalised = dataclasses.replace(initialization, normalisation=Normalisation((0.5,) * 3, (0.5,) * 3))
    assert results_key(config, "manifest", renormalised) != key
    assert CODE_VERSION == "eval-3"
    monkeypatch.setattr("distinit.evaluate.run_store.CODE_VERSION", "eval-1")
    old_key = results_key(config, "manifest", initialization)
    monkeypatch.undo()
    assert old_key != key
    run = RunResult(split=1, seed=0, clip_top1=0.5, video_top1=0.5, video_top5=1.0, train_videos=9, test_videos=6,
                    test_views=12, failed_videos=[], failed_test_videos=0, trunk_lr_scale=1.0, ablations={},
                    validation_videos=3, lr=0.003, stop_epoch=1,
                    curves=[], confusion=[[0]], predictions=[], seconds=1.0)
    record_path, _ = _run_paths(tmp_path, 1, 0)
    record_path.parent.mkdir(parents=True)
    old_fields = {name: value for name, value in run.to_dict().items()
                  if name not in ("failed_test_videos", "trunk_lr_scale", "ablations")}
    for stored_key, stored_run, reused in ((old_key, run.to_dict(), False), (key, old_fields, False),
                                           (key, run.to_dict(), True)):
        record_path.write_text(json.dumps({"key": stored_key, "run": stored_run}))
        assert (_cached_run(tmp_path, key, 1, 0, config) == run) is reused


# ---------------------------------------------------------------------------------------------- errors
def _one_line_error(arguments: list[str], *expected: str) -> None:
    result = CliRunner().invoke(main, ["eval", *arguments, "--workers", "0", "--device", "cpu", "--no-progress"])
    assert result.exit_code != 0, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for text in expected:
        assert text in result.output, result.output


def _hmdb_arguments(layout, tmp_path: Path, *extra: str) -> list[str]:
    return ["--data", "hmdb51", "--root", str(layout.root), "--splits-dir", str(layout.splits_dir), "--splits", "1",
            "--out", str(tmp_path / "out"), *extra]


def test_missing_checkpoint_is_a_one_line_error(hmdb, tmp_path):
    missing = tmp_path / "runs" / "checkpoint-last.pt"
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", str(missing)), str(missing), "not found")


def test_checkpoint_of_another_architecture_is_a_one_line_error(hmdb, checkpoint, tmp_path):
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", str(checkpoint), "--student", "r3d_18"),
                    str(checkpoint), "r2plus1d_18", "r3d_18")
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", str(checkpoint), "--width", "full"), "width tiny")


def test_file_that_is_not_a_distinit_checkpoint_is_a_one_line_error(hmdb, tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", str(other)), str(other), "not a distinit checkpoint")


def test_split_with_fewer_training_videos_than_a_batch_is_a_one_line_error(hmdb, tmp_path):
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", "scratch", "--width", "tiny", "--batch-size", "10"),
                    "split 1 has 6 training videos after holding out 3 for validation, fewer than batch_size=10")
    assert not (tmp_path / "out").exists()


def test_unknown_init_form_lists_the_forms(hmdb, tmp_path):
    _one_line_error(_hmdb_arguments(hmdb, tmp_path, "--init", "imagenet"), "'imagenet'", "scratch", "inflated:")


def test_split_with_an_empty_test_list_is_a_one_line_error(hmdb, tmp_path):
    splits_dir = tmp_path / "splits"
    shutil.copytree(hmdb.splits_dir, splits_dir)
    for path in splits_dir.glob("*_test_split2.txt"):  # split 2 lists no test video (code 2 -> 0)
        path.write_text("".join(line.replace(" 2 ", " 0 ") for line in path.read_text().splitlines(keepends=True)))
    arguments = ["--data", "hmdb51", "--root", str(hmdb.root), "--splits-dir", str(splits_dir), "--splits", "1,2",
                 "--init", "scratch", "--width", "tiny", "--out", str(tmp_path / "out")]
    _one_line_error(arguments, str(splits_dir), "split 2", "empty test list")
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_a_run_folder_or_runs_root_stands_for_its_last_checkpoint(tmp_path):
    run = tmp_path / "distill" / "0123abcd"
    run.mkdir(parents=True)
    (run / "checkpoint-last.pt").write_bytes(b"")
    (tmp_path / "distill" / "latest").write_text("0123abcd\n")
    assert checkpoint_path(str(tmp_path / "distill")) == run / "checkpoint-last.pt"
    assert checkpoint_path(str(run)) == run / "checkpoint-last.pt"
    assert checkpoint_path("elsewhere/model.pt") == Path("elsewhere/model.pt")
    assert checkpoint_path("imagenet") is None


def test_config_refuses_repeated_splits():
    with pytest.raises(Exception, match="must not repeat"):
        dataclasses.replace(EvalConfig(), splits=(1, 1))


def test_compare_writes_the_table_results_and_plots(hmdb, checkpoint, tmp_path, monkeypatch):
    from distinit.evaluate.compare import compare

    monkeypatch.chdir(tmp_path)  # run_eval caches under results/eval/<key> relative to the working folder
    config = _config(hmdb, tmp_path / "unused", splits=(1,), seeds=(0, 1), init="scratch", student=None, width=None)
    comparison = compare(config, ["scratch", str(checkpoint)], tmp_path / "compare")
    assert [label.split(" [")[0] for label in comparison.labels] == ["scratch", "DistInit"]
    # scratch copies the checkpoint's architecture, so both rows are the same network
    assert all("r2plus1d_18 tiny" in label for label in comparison.labels)
    report = (tmp_path / "compare" / "RESULTS.md").read_text()
    assert "| scratch [r2plus1d_18 tiny] |" in report and "| DistInit [r2plus1d_18 tiny] |" in report
    for name in ("results.json", "curves.png", "confusion.png", "provenance.json"):
        assert (tmp_path / "compare" / name).stat().st_size > 0
    assert all(len(result.runs) == 2 for result in comparison.results)
    # one schedule for every row: an unset trunk scale is 1.0 for the pretrained init too, not its 0.1 default
    assert config.lr_trunk_scale is None and "trunk lr x1.0, the same for every init" in report
    assert {result.config.lr_trunk_scale for result in comparison.results} == {1.0}


def test_compare_labels_name_the_init_and_its_network():
    from types import SimpleNamespace

    from distinit.evaluate.compare import init_label

    inflated = {"kind": "inflated", "spec": "inflated:efficientnet_lite0", "architecture": {"name": "efficientnet_lite0_3d"}}
    checkpoint = {"kind": "checkpoint", "architecture": {"name": "r2plus1d_18", "width": "tiny"}}
    assert init_label(SimpleNamespace(init=inflated)) == "inflated (efficientnet_lite0) [efficientnet_lite0_3d]"
    assert init_label(SimpleNamespace(init=checkpoint)) == "DistInit [r2plus1d_18 tiny]"


def test_finetuning_and_testing_use_the_inits_own_normalisation(hmdb, tmp_path, monkeypatch):
    """Every clip the network sees, in training and at test, is normalised with the init's mean/std: an init with
    a distinctive normalisation must see exactly (x - mean) / std of its uint8 frames, so a change that gives every
    init the Kinetics statistics (or any other) fails here."""
    from distinit.evaluate import finetune as finetune_module
    from distinit.evaluate.initialization import Initialization

    own = Normalisation((0.11, 0.52, 0.93), (0.31, 0.17, 0.45))
    seen = {"train": [], "eval": []}

    class Spy(torch.nn.Module):
        """A tiny trunk that records, per mode, what the pixels it is fed were before normalisation."""

        feature_dim = 4

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def features(self, clips):  # (B, 3, T, H, W)
            mean = torch.tensor(own.mean).view(1, 3, 1, 1, 1)
            std = torch.tensor(own.std).view(1, 3, 1, 1, 1)
            pixels = (clips.float() * std + mean) * 255.0  # undone with the init's own statistics
            seen["train" if self.training else "eval"].append((pixels - pixels.round()).abs().max().item())
            return self.linear(clips.float().mean(dim=(2, 3, 4)))

    initialization = Initialization("scratch", {"kind": "scratch", "spec": "spy", "architecture": {}}, False, "spy",
                                    Spy, own)
    config = _config(hmdb, tmp_path / "out", test_clips=1, temporal_ablations=False)
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    train, test = listing.split(1, "train"), listing.split(1, "test")
    finetune_module.run_split(train, test, 1, 0, 3, config, initialization, torch.device("cpu"), False)
    assert seen["train"] and seen["eval"]
    # Undone with the init's statistics, every value is a whole grey level (0-255), to float32 precision.
    assert max(seen["train"]) < 1e-3 and max(seen["eval"]) < 1e-3
    # ...which the video mean/std would not give: the same pixels normalised the Kinetics way are off by levels.
    kinetics_mean = torch.tensor(VIDEO_NORMALISATION.mean).view(3, 1, 1)
    kinetics_std = torch.tensor(VIDEO_NORMALISATION.std).view(3, 1, 1)
    grey = torch.full((3, 1, 1), 100.0)
    wrong = (((grey / 255.0 - kinetics_mean) / kinetics_std) * torch.tensor(own.std).view(3, 1, 1)
             + torch.tensor(own.mean).view(3, 1, 1)) * 255.0
    assert (wrong - wrong.round()).abs().max() > 1e-2


def test_tuning_scores_validation_only_and_is_reused(hmdb, tmp_path, monkeypatch):
    """Tuning trains on each split's train part, scores only that split's validation part (never a test video),
    chooses by the rule in evaluate.tuning, caches each curve; the tuned runs keep their split's lr and epoch, and the
    run with the tuning seed repeats the tuning run's trajectory up to the chosen epoch."""
    from distinit.evaluate import finetune as finetune_module
    from distinit.evaluate import tuning as tuning_module
    from distinit.evaluate.validation import split_validation

    monkeypatch.chdir(tmp_path)
    scored_ids = []
    real_clips = finetune_module.EvaluationClips

    def spying_clips(records, *args, **kwargs):
        scored_ids.append({record.id for record in records})
        return real_clips(records, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "EvaluationClips", spying_clips)
    config = _config(hmdb, tmp_path / "out", splits=(1, 2), epochs=3, tune_lrs=(0.001, 0.01), val_clips=1,
                     temporal_ablations=False, dropout=0.5)
    tuning = tuning_module.tune(config)
    listing = load_dataset("hmdb51", hmdb.root, splits_dir=hmdb.splits_dir)
    validation = {split: split_validation(listing.split(split, "train"), "hmdb51", config.val_fraction,
                                          config.val_seed)[1] for split in (1, 2)}
    # one validation loader per (split, lr), each on that split's own validation part, nothing else
    assert scored_ids == [{record.id for record in validation[split]} for split in (1, 1, 2, 2)]
    for split in (1, 2):
        assert not {record.id for record in validation[split]} & _test_ids(hmdb, split)
    assert [entry.split for entry in tuning.splits] == [1, 2]
    for entry in tuning.splits:
        assert set(entry.curves) == {"0.001", "0.01"} and all(len(curve) == 3 for curve in entry.curves.values())
        assert (entry.lr, entry.stop_epoch, entry.val_video_top1) == tuning_module.choose(entry.curves)
        assert entry.validation_videos == 3 and entry.train_videos == 6
    # Cached: tuning again trains nothing.
    monkeypatch.setattr(tuning_module, "finetune", lambda *args, **kwargs: pytest.fail("tuned twice"))
    assert tuning_module.tune(config).to_dict() == tuning.to_dict()
    scored_ids.clear()
    final = run_eval(config, chosen=tuning.chosen())
    assert scored_ids == [_test_ids(hmdb, 1), _test_ids(hmdb, 2)]  # test scored once per run, after tuning
    for run, entry in zip(final.runs, tuning.splits):
        assert (run.split, run.lr, run.stop_epoch, len(run.curves)) == (entry.split, entry.lr, entry.stop_epoch,
                                                                         entry.stop_epoch)
        # The same seed, data and schedule: the kept run's training losses are the tuning run's, epoch for epoch.
        tuned_losses = [record["train_loss"] for record in entry.curves[f"{entry.lr:g}"][:entry.stop_epoch]]
        assert [record["train_loss"] for record in run.curves] == tuned_losses


def test_the_choice_prefers_validation_accuracy_then_loss_then_the_earlier_epoch():
    from distinit.evaluate.tuning import choose

    curves = {"0.001": [{"epoch": 1, "val_video_top1": 0.5, "val_loss": 0.9},
                        {"epoch": 2, "val_video_top1": 0.5, "val_loss": 0.8}],
              "0.01": [{"epoch": 1, "val_video_top1": 0.5, "val_loss": 0.8},
                       {"epoch": 2, "val_video_top1": 0.25, "val_loss": 0.1}]}
    assert choose(curves) == (0.01, 1, 0.5)  # ties on accuracy and loss: the earlier epoch
    curves["0.001"][1]["val_video_top1"] = 0.75
    assert choose(curves) == (0.001, 2, 0.75)


def test_run_and_tuning_keys_hold_what_changes_them_and_nothing_else(tmp_path):
    """A finetuning run scored on test is keyed by its lr and stop_epoch, not by the grid or validation clips that
    chose them; a tuning curve is keyed by validation options, not by test-time ones."""
    config = _config(SimpleNamespace(root="unused", splits_dir="unused"), tmp_path, tune_lrs=(0.001, 0.01))
    initialization = resolve_init("scratch", student="r2plus1d_18", width="tiny")

    def key(purpose, **changes):
        return results_key(dataclasses.replace(config, **changes), "manifest", initialization, purpose=purpose)

    assert key("run") == key("run", tune_lrs=(0.1,), val_clips=7)
    assert key("run") != key("run", lr=0.5) and key("run") != key("run", stop_epoch=1)
    assert key("run") != key("run", val_fraction=0.3) and key("run") != key("run", test_clips=3)
    assert key("tuning") == key("tuning", test_clips=3, three_crop=True, temporal_ablations=False, stop_epoch=1,
                                tune_lrs=(0.1,))
    assert key("tuning") != key("tuning", val_clips=7) and key("tuning") != key("tuning", val_seed=1)
    # The stage key (a whole comparison) holds everything, the grid included.
    assert config.key_fields("stage") != dataclasses.replace(config, tune_lrs=(0.1,)).key_fields("stage")


def test_validation_holds_out_whole_source_groups_or_single_videos_as_asked(tmp_path):
    """val_groups=source keeps a source group on one side of train/validation; video divides single videos (for a
    labeled set whose official split shares sources between train and test, as the demo's does)."""
    from dataset_fixtures import make_hmdb51_grouped
    from distinit.evaluate.finetune import training_parts
    from distinit.pipeline.datasets.groups import source_group

    layout = make_hmdb51_grouped(tmp_path / "grouped")
    listing = load_dataset("hmdb51", layout.root, splits_dir=layout.splits_dir)
    train, test = listing.split(1, "train"), listing.split(1, "test")
    config = _config(layout, tmp_path / "out", val_fraction=0.3)
    parts = {grouping: training_parts(dataclasses.replace(config, val_groups=grouping), 1, train, test)
             for grouping in ("source", "video")}
    for grouping, (train_part, validation_part) in parts.items():
        assert validation_part and not {record.id for record in validation_part} & {record.id for record in test}
        shared = ({source_group("hmdb51", record.id) for record in train_part}
                  & {source_group("hmdb51", record.id) for record in validation_part})
        assert (not shared) if grouping == "source" else bool(shared)  # single videos: groups straddle the line
    with pytest.raises(ConfigError, match="val_groups"):
        dataclasses.replace(config, val_groups="clips")
