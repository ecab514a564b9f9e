"""Stage two's trainer end to end on tiny targets: overfitting, resume, refusal of broken targets, DDP, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import distill.train as train_module
from distill.checkpoint import CHECKPOINT_KEYS, ResumeError, resume_or_start
from distill.config import DistillConfig
from distill.augment import normalise_video
from distill.data import ClipSpec, TargetClipDataset, split_videos
from distill.distributed import DistributedContext
from distill.heads import head_specs_from_teachers
from distill.losses import DistillationLoss
from distill.seeding import rng_states
from distill.students import create_student
from distill.train import TrainingError, train
from extract.config import ExtractConfig
from extract.run import run_extraction
from pipeline.cli import main
from pipeline.errors import DistinitError
from pipeline.hashing import sha256_file, sha256_json
from pipeline.shards import TargetStore
from pipeline.video.binary import ffmpeg_binary

PATTERNS = ("testsrc", "testsrc2", "smptebars", "rgbtestsrc", "smptehdbars", "yuvtestsrc")


@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory) -> Path:
    """11 tiny videos (2 s, 10 fps) and their EfficientNet-Lite0 targets, extracted by the real runner."""
    root = tmp_path_factory.mktemp("videos")
    for number in range(11):
        pattern = PATTERNS[number % len(PATTERNS)]
        command = [
            ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=48x32:rate=10", "-t", "2",
            "-vf", f"hue=h={number * 33}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-threads", "1",
            str(root / f"video_{number:02d}.mp4"),
        ]
        subprocess.run(command, check=True, timeout=60)
    out = tmp_path_factory.mktemp("targets")
    report = run_extraction(
        ExtractConfig(data="folder", root=str(root), out=str(out), shard_count=2, workers=0), show_progress=False
    )
    return report.targets_dir


def _config(targets: Path, out: Path, **overrides) -> DistillConfig:
    values = dict(
        targets=str(targets), out=str(out), student="r2plus1d_18", width="tiny", frames=4, stride=2, short_side=32,
        crop=32, batch_size=2, epochs=2, val_fraction=0.1, workers=0, optimizer="adamw", lr=2e-3, warmup_steps=2,
        save_every_steps=100, deterministic=True, seed=3,
    )
    values.update(overrides)
    return DistillConfig(**values)


def test_overfit_one_batch_loss_falls_by_80_percent(tiny_targets):
    store = TargetStore(tiny_targets)
    heads = head_specs_from_teachers(store.teachers)
    dataset = TargetClipDataset(tiny_targets, sorted(store.video_ids())[:4], ClipSpec(4, 2, 32, 32), train=False)
    batch = torch.utils.data.default_collate([dataset[index] for index in range(4)])
    model = create_student("r2plus1d_18", heads, width="tiny")
    loss_fn = DistillationLoss(heads, temperature=2.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    video = normalise_video(batch["video"], model.input_normalisation)  # uint8 clips, normalised as the trainer does
    for _ in range(50):
        terms = loss_fn(model(video), batch["targets"])
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] <= 0.2 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_loaders_keep_their_workers_and_give_the_batches_of_one_process(tiny_targets):
    """The trainer's loaders: persistent workers whenever there are workers, told each epoch only through the
    sampler, drawing the batches one process draws; pinned memory only for CUDA."""
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    epochs = {}
    for workers in (0, 2):
        _, train_loader, val_loader = train_module.build_loaders(_config(tiny_targets, Path("unused"), workers=workers),
                                                                 tiny_targets, context)
        assert train_loader.persistent_workers == (workers > 0) and not val_loader.persistent_workers
        assert not train_loader.pin_memory
        drawn = []
        for epoch in range(2):
            train_loader.sampler.set_epoch(epoch)
            drawn.append([(batch["video_id"], batch["clip_start"].tolist(), batch["video"]) for batch in train_loader])
        epochs[workers] = drawn
    assert [starts for _, starts, _ in epochs[0][0]] != [starts for _, starts, _ in epochs[0][1]]
    for one_process, with_workers in zip(epochs[0], epochs[2]):
        assert [(ids, starts) for ids, starts, _ in one_process] == [(ids, starts) for ids, starts, _ in with_workers]
        assert all(torch.equal(first, second) for (_, _, first), (_, _, second) in zip(one_process, with_workers))


def test_train_writes_checkpoints_logs_and_provenance(tiny_targets, tmp_path):
    result = train(_config(tiny_targets, tmp_path), show_progress=False)
    steps_per_epoch = 5  # 10 train videos (1 held out), batch 2
    assert result.step == 2 * steps_per_epoch and result.epoch == 2 and not result.stopped_early
    names = sorted(path.name for path in result.run_dir.iterdir())
    assert {"checkpoint-last.pt", "checkpoint-best.pt", "config.yaml", "provenance.json", "log.jsonl"} <= set(names)
    records = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_agreement_top1", "clips_per_second", "data_wait_fraction", "lr"):
        assert key in records[0]
    checkpoint = torch.load(result.run_dir / "checkpoint-last.pt", weights_only=False)
    assert set(checkpoint) == {"model", "architecture", "optimizer", "step", "epoch", "rng", "world_size", "config",
                               "best_val_loss", "provenance", "pretraining_videos", "epoch_progress"} == set(CHECKPOINT_KEYS)
    assert checkpoint["architecture"]["name"] == "r2plus1d_18" and checkpoint["step"] == 10
    assert checkpoint["epoch_progress"] == [None]  # saved at an epoch's end: no epoch under way
    assert checkpoint["world_size"] == 1 and len(checkpoint["rng"]) == 1 and "torch" in checkpoint["rng"][0]
    provenance = checkpoint["provenance"]
    assert provenance["targets_manifest_sha256"] and provenance["dataset"] == "folder"
    # Every video of the targets, held-out ones included: all of them were seen before evaluation. The names
    # once, in the checkpoint; the provenance (and so provenance.json and every eval result) their count and hash.
    expected_names = [f"video_{number:02d}" for number in range(11)]
    videos_hash = sha256_json(expected_names)
    # ... and the first 16 hex digits of each original file's sha256, as stage one stored them (eval matches by it)
    videos_root = Path(json.loads((tiny_targets / "manifest.json").read_text())["extra"]["videos_root"])
    content = sorted(sha256_file(videos_root / f"{name}.mp4")[:16] for name in expected_names)
    assert checkpoint["pretraining_videos"] == {"count": 11, "names": expected_names, "sha256": videos_hash,
                                                "content_sha256": content}
    assert provenance["pretraining_videos"] == {"count": 11, "sha256": videos_hash, "dataset": "folder"}
    provenance_file = (result.run_dir / "provenance.json").read_text()
    assert json.loads(provenance_file)["pretraining_videos"]["count"] == 11 and "video_00" not in provenance_file
    assert (tmp_path / "latest").read_text().strip() == result.run_dir.name


def _logged_figures(run_dir: Path) -> list[dict]:
    """log.jsonl's loss figures and clip counts per epoch (not the timings, which no two runs share)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    timings = ("clips_per_second", "data_wait_fraction", "seconds")
    return [{key: value for key, value in record.items() if key not in timings} for record in records]


@pytest.mark.parametrize("stop_at", [5, 3])
def test_resume_after_kill_gives_the_same_weights_and_epoch_figures(tiny_targets, tmp_path, stop_at):
    straight = train(_config(tiny_targets, tmp_path / "straight"), show_progress=False)
    interrupted = train(_config(tiny_targets, tmp_path / "resumed", stop_after_steps=stop_at), show_progress=False)
    assert interrupted.stopped_early and interrupted.step == stop_at
    progress = torch.load(interrupted.run_dir / "checkpoint-last.pt", weights_only=False)["epoch_progress"]
    assert len(progress) == 1 and progress[0]["totals"]["clips"] == 2 * stop_at  # batch 2
    resumed = train(_config(tiny_targets, tmp_path / "resumed"), show_progress=False)
    assert resumed.step == straight.step == 10
    weights_straight = torch.load(straight.run_dir / "checkpoint-last.pt", weights_only=False)["model"]
    weights_resumed = torch.load(resumed.run_dir / "checkpoint-last.pt", weights_only=False)["model"]
    assert weights_straight.keys() == weights_resumed.keys()
    for name in weights_straight:
        assert torch.equal(weights_straight[name], weights_resumed[name]), name
    # The epoch cut by the kill is logged over all its steps, those before the kill included (stop_at=5: all of
    # them), each kd/ term and the held-out figures alike.
    logged_straight, logged_resumed = _logged_figures(straight.run_dir), _logged_figures(resumed.run_dir)
    assert [record["epoch"] for record in logged_resumed] == [1, 2]
    assert any(key.startswith("train_kd/") for key in logged_straight[0])
    for record_straight, record_resumed in zip(logged_straight, logged_resumed):
        assert record_resumed == pytest.approx(record_straight, rel=1e-9, abs=1e-12)
    assert resumed.history[0]["clips_per_second"] > 0


def test_resume_from_a_checkpoint_without_epoch_progress_warns_and_goes_on(tiny_targets, tmp_path, caplog):
    """Checkpoints written before they kept the epoch's running figures still resume; the resumed epoch's train
    figures then cover its remaining steps only, and a warning says so."""
    interrupted = train(_config(tiny_targets, tmp_path, stop_after_steps=3), show_progress=False)
    last = interrupted.run_dir / "checkpoint-last.pt"
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["epoch_progress"]
    torch.save(checkpoint, last)
    with caplog.at_level("WARNING", logger="distill.train"):
        resumed = train(_config(tiny_targets, tmp_path), show_progress=False)
    assert resumed.step == 10 and resumed.epoch == 2 and not resumed.stopped_early
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("epoch 1's logged train figures cover only its steps after step 3" in message for message in warnings)
    assert all(record["train_loss"] > 0 for record in _logged_figures(resumed.run_dir))


def test_each_rank_resumes_its_own_epoch_progress(tmp_path):
    """Each rank summed its own part of the epoch: under DDP, rank r takes entry r of the checkpoint's list."""
    model = torch.nn.Linear(2, 2)
    model.architecture = lambda: {"name": "linear"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    own = [{"totals": {"parts": torch.full((2, 1), float(rank)), "clips": rank + 1}, "data_wait": 0.0, "seconds": 1.0}
           for rank in range(2)]
    checkpoint = {"model": model.state_dict(), "architecture": {"name": "linear"}, "optimizer": optimizer.state_dict(),
                  "step": 3, "epoch": 0, "rng": [rng_states(), rng_states()], "world_size": 2, "best_val_loss": 1.0,
                  "epoch_progress": own}
    torch.save(checkpoint, tmp_path / "checkpoint-last.pt")
    for rank in range(2):
        context = DistributedContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        state = resume_or_start(tmp_path, model, optimizer, context)
        assert state["step"] == 3 and state["epoch_progress"]["totals"]["clips"] == rank + 1


def test_resume_with_other_world_size(tiny_targets, tmp_path):
    config = _config(tiny_targets, tmp_path, stop_after_steps=1)
    first = train(config, show_progress=False)
    fingerprint = train_module.targets_fingerprint(tiny_targets)
    assert first.run_dir.name == train_module.run_key(config, fingerprint, 1)
    checkpoint = torch.load(first.run_dir / "checkpoint-last.pt", weights_only=False)
    # As two processes would have written it: a world size of 2 and one RNG state per rank.
    checkpoint["world_size"] = 2
    checkpoint["rng"] = checkpoint["rng"] * 2
    # The number of processes is part of the run key: a 2-process run has its own folder, which a 1-process
    # run never resumes from; it trains its own model instead.
    other_dir = tmp_path / train_module.run_key(config, fingerprint, 2)
    assert other_dir != first.run_dir
    other_dir.mkdir()
    torch.save(checkpoint, other_dir / "checkpoint-last.pt")
    (first.run_dir / "checkpoint-last.pt").unlink()
    fresh = train(_config(tiny_targets, tmp_path, stop_after_steps=1), show_progress=False)
    assert fresh.run_dir == first.run_dir and fresh.step == 1
    # The refusal stays, for a checkpoint put into a run folder by hand.
    last = first.run_dir / "checkpoint-last.pt"
    torch.save(checkpoint, last)
    with pytest.raises(ResumeError) as refused:
        train(_config(tiny_targets, tmp_path), show_progress=False)
    message = str(refused.value)
    assert "\n" not in message and str(last) in message
    assert "written by 2 processes, this run has 1" in message and "--nproc_per_node 2" in message
    assert torch.load(last, weights_only=False)["step"] == 1  # left as it was
    # A checkpoint from before the field (distill-1) falls back on its provenance's world size.
    del checkpoint["world_size"]
    checkpoint["rng"] = checkpoint["rng"][0]  # distill-1 kept rank 0's states only
    checkpoint["provenance"]["world_size"] = 2
    torch.save(checkpoint, last)
    with pytest.raises(ResumeError, match="written by 2 processes, this run has 1"):
        train(_config(tiny_targets, tmp_path), show_progress=False)


def test_non_finite_loss_stops_training(tiny_targets, tmp_path, monkeypatch):
    real_call = train_module.DistillationLoss.__call__

    def poisoned(self, predictions, targets):
        terms = real_call(self, predictions, targets)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module.DistillationLoss, "__call__", poisoned)
    with pytest.raises(TrainingError, match="non-finite"):
        train(_config(tiny_targets, tmp_path), show_progress=False)
    assert not list(tmp_path.rglob("checkpoint-*.pt"))  # stopped before any checkpoint, the last one included


def test_refuses_broken_targets_naming_the_shard(tiny_targets, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tiny_targets.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    shard = broken / "shard-00001-of-00002.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DistinitError, match="shard-00001-of-00002.h5"):
        train(_config(broken, tmp_path / "runs"), show_progress=False)
    result = CliRunner().invoke(main, ["distill", "--targets", str(broken), "--width", "tiny", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "shard-00001-of-00002.h5" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_distill_then_export_refuses_tiny(tiny_targets, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [
        "distill", "--targets", str(tiny_targets), "--width", "tiny", "--frames", "4", "--short-side", "32", "--crop", "32",
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / (tmp_path / "latest").read_text().strip()
    exported = runner.invoke(main, ["export", str(run_dir / "checkpoint-last.pt"), "--out", str(tmp_path / "trunk.pt")])
    assert exported.exit_code != 0 and "tiny" in exported.output


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_checkpoint(tiny_targets, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "pipeline", "distill", "--targets", str(tiny_targets), "--width", "tiny", "--frames", "4",
        "--short-side", "32", "--crop", "32", "--epochs", "1", "--batch-size", "2", "--workers", "0",
        "--device", "cpu", "--out", str(tmp_path), "--no-progress",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": done") == 1 and done.stdout.count("train_loss") == 1, done.stdout  # rank 0 reports
    run_dir = tmp_path / (tmp_path / "latest").read_text().strip()
    checkpoint = torch.load(run_dir / "checkpoint-last.pt", weights_only=False)
    assert checkpoint["provenance"]["world_size"] == checkpoint["world_size"] == 2
    # Each rank's own RNG states (seeded differently), not rank 0's twice.
    assert len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
    assert checkpoint["step"] == 3  # 10 train clips over 2 ranks -> 5 per rank -> 3 batches of 2
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 1
