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

import distinit.distill.train as train_module
from distinit.distill.checkpoint import CHECKPOINT_KEYS, ResumeError, resume_or_start
from distinit.distill.config import DistillConfig
from distinit.distill.data import TargetClipDataset, split_videos
from distinit.pipeline.training.distributed import DistributedContext
from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.losses import DistillationLoss
from distinit.pipeline.training.seeding import rng_states
from distinit.distill.students import create_student
from distinit.distill.train import TrainingError, train
from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.pipeline.cli import main
from distinit.pipeline.clips.normalisation import normalise_video
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_file, sha256_json
from distinit.pipeline.shards import TargetStore
from distinit.pipeline.video.binary import ffmpeg_binary

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
    assert set(checkpoint) == {"model", "architecture", "optimizer", "step", "epoch", "rng", "world_size", "global_batch", "config",
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
    with caplog.at_level("WARNING", logger="distinit.distill.train"):
        resumed = train(_config(tiny_targets, tmp_path), show_progress=False)
    assert resumed.step == 10 and resumed.epoch == 2 and not resumed.stopped_early
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("epoch 1's logged train figures cover only its steps after step 3" in message for message in warnings)
    assert all(record["train_loss"] > 0 for record in _logged_figures(resumed.run_dir))


def test_each_rank_resumes_its_own_epoch_progress(tmp_path):
    """Each rank summed its own part of the epoch: under DDP, rank r takes entry r of the checkpoint's list; resumed by
    another number of processes, rank 0 carries every saved rank's sums (the epoch's figures are sums over ranks)."""
    model = torch.nn.Linear(2, 2)
    model.architecture = lambda: {"name": "linear"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    own = [{"totals": {"parts": torch.full((2, 1), float(rank + 1)), "clips": rank + 1}, "data_wait": 0.0,
            "seconds": 1.0, "crop_in_view": [0.5 * (rank + 1), rank + 1]} for rank in range(2)]
    checkpoint = {"model": model.state_dict(), "architecture": {"name": "linear"}, "optimizer": optimizer.state_dict(),
                  "step": 3, "epoch": 0, "rng": [rng_states(), rng_states()], "world_size": 2, "global_batch": 4,
                  "best_val_loss": 1.0, "epoch_progress": own}
    torch.save(checkpoint, tmp_path / "checkpoint-last.pt")
    for rank in range(2):
        context = DistributedContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        state = resume_or_start(tmp_path, model, optimizer, context, global_batch=4)
        assert state["step"] == 3 and state["epoch_progress"]["totals"]["clips"] == rank + 1
    alone = resume_or_start(tmp_path, model, optimizer, DistributedContext(0, 1, 0, torch.device("cpu")), global_batch=4)
    assert alone["step"] == 3 and alone["epoch_progress"]["totals"]["clips"] == 3
    assert torch.equal(alone["epoch_progress"]["totals"]["parts"], torch.full((2, 1), 3.0))
    assert alone["epoch_progress"]["crop_in_view"] == [1.5, 3]
    for rank in range(4):  # on more processes: the new ranks start from zero sums and keep their seeds
        context = DistributedContext(rank=rank, world_size=4, local_rank=rank, device=torch.device("cpu"))
        state = resume_or_start(tmp_path, model, optimizer, context, global_batch=4)
        assert state["epoch_progress"]["totals"]["clips"] == (3 if rank == 0 else 0)


def _torchrun_distill(targets: Path, out: Path, port: int, *options: str) -> subprocess.CompletedProcess:
    """`distinit distill` under torchrun as two CPU processes (gloo), the tiny recipe of _config."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "distinit.pipeline", "distill", "--targets", str(targets), "--width", "tiny", "--frames", "4", "--stride", "2",
        "--short-side", "32", "--crop", "32", "--batch-size", "2", "--epochs", "2", "--workers", "0", "--optimizer",
        "adamw", "--lr", "2e-3", "--seed", "3", "--deterministic", "--device", "cpu", "--out", str(out),
        "--no-progress", "--set", "val_fraction=0.1", "--set", "warmup_steps=2", "--set", "student=r2plus1d_18", "--set", "save_every_steps=100",
        *options,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_run_is_its_global_batch_on_any_number_of_processes(tiny_targets, tmp_path):
    """global_batch 4 of batch_size 2: one process accumulating two micro-batches and two processes of one are one
    run (one key, one folder), resume into each other from the saved step, and train the same weights as an
    uninterrupted run up to float summation order (the same micro-batches in the same steps)."""
    config = _config(tiny_targets, tmp_path / "a", global_batch=4, stop_after_steps=1)
    fingerprint = train_module.targets_fingerprint(tiny_targets)
    assert train_module.run_key(config, fingerprint, 1) == train_module.run_key(config, fingerprint, 2)
    assert config.accum_steps(1) == 2 and config.accum_steps(2) == 1
    with pytest.raises(DistinitError, match="global_batch=4 is not a multiple of batch_size=2 x 3 processes"):
        config.accum_steps(3)
    # 1 process (2 accumulation steps) stops after step 1; 2 processes resume it and finish.
    first = train(config, show_progress=False)
    assert first.step == 1 and first.stopped_early
    finished = _torchrun_distill(tiny_targets, tmp_path / "a", 29541, "--set", "global_batch=4")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (tmp_path / "a" / "latest").read_text().strip() == first.run_dir.name  # the same folder
    assert "written by 1 processes, resumed by 2 at step 1" in finished.stderr
    # The other way: 2 processes stop after step 1, 1 process resumes.
    stopped = _torchrun_distill(tiny_targets, tmp_path / "b", 29542, "--set", "global_batch=4",
                                "--set", "stop_after_steps=1")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    resumed = train(_config(tiny_targets, tmp_path / "b", global_batch=4), show_progress=False)
    assert resumed.run_dir.name == first.run_dir.name and resumed.step == 6 and not resumed.stopped_early
    # Both equal an uninterrupted one-process run, up to the order gradients are summed in (AdamW, lr 2e-3, turns a
    # last-digit difference of a near-zero gradient into up to ~1e-4 a step; training moves them ~1e-2). The weights: BatchNorm's
    # running statistics are not (DDP broadcasts rank 0's each step; accumulation runs every micro-batch through
    # them), and they only enter evaluation.
    whole = train(_config(tiny_targets, tmp_path / "c", global_batch=4), show_progress=False)
    assert whole.step == 6  # 10 training clips, 4 a step: 3 steps an epoch (the last padded), 2 epochs
    reference = torch.load(whole.run_dir / "checkpoint-last.pt", weights_only=False)["model"]
    for out in ("a", "b"):
        weights = torch.load(tmp_path / out / first.run_dir.name / "checkpoint-last.pt", weights_only=False)["model"]
        for name, value in reference.items():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.allclose(weights[name], value, atol=1e-3, rtol=0), (out, name)


def test_resume_refuses_a_checkpoint_of_another_global_batch(tiny_targets, tmp_path):
    config = _config(tiny_targets, tmp_path, stop_after_steps=1)
    first = train(config, show_progress=False)
    last = first.run_dir / "checkpoint-last.pt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_batch"] == 2 and checkpoint["world_size"] == 1
    checkpoint["global_batch"] = 8  # put into this run's folder by hand
    torch.save(checkpoint, last)
    with pytest.raises(ResumeError) as refused:
        train(_config(tiny_targets, tmp_path), show_progress=False)
    message = str(refused.value)
    assert "\n" not in message and str(last) in message
    assert "global batch of 8 clips, this run has 2" in message and "global_batch=8" in message
    assert torch.load(last, weights_only=False)["step"] == 1  # left as it was
    del checkpoint["global_batch"]  # written by distill-3, which cut epochs per process
    torch.save(checkpoint, last)
    with pytest.raises(ResumeError, match="before runs were keyed by global batch"):
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


def _copy_targets(targets: Path, copy: Path) -> Path:
    """A copy of a targets folder, without the record of a clean verify (verified.json) a test may have left."""
    copy.mkdir()
    for path in targets.iterdir():
        if path.name != "verified.json":
            (copy / path.name).write_bytes(path.read_bytes())
    return copy


def _flip_a_byte(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_refuses_broken_targets_naming_the_shard(tiny_targets, tmp_path):
    broken = _copy_targets(tiny_targets, tmp_path / "broken")
    _flip_a_byte(broken / "shard-00001-of-00002.h5")
    with pytest.raises(DistinitError, match="shard-00001-of-00002.h5"):
        train(_config(broken, tmp_path / "runs"), show_progress=False)
    result = CliRunner().invoke(main, ["distill", "--targets", str(broken), "--width", "tiny", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "shard-00001-of-00002.h5" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_start_reads_no_shard_when_nothing_changed_since_the_last_clean_verify(tiny_targets, tmp_path, monkeypatch):
    """Without a record of a clean `distinit verify`, a start reads every byte (and writes nothing outside its --out);
    once verify recorded one (verified.json), starts stat the files only; a shard rewritten since (another
    modification time) is verified again, and its damage refused."""
    import distinit.distill.targets_folder as targets_folder

    copy = _copy_targets(tiny_targets, tmp_path / "targets")
    calls = []
    real_verify = targets_folder.verify
    monkeypatch.setattr(targets_folder, "verify", lambda folder: calls.append(folder) or real_verify(folder))
    train(_config(copy, tmp_path / "runs", stop_after_steps=1), show_progress=False)
    assert len(calls) == 1 and not (copy / "verified.json").exists()
    verified = CliRunner().invoke(main, ["verify", str(copy)])
    assert verified.exit_code == 0 and (copy / "verified.json").is_file()
    train(_config(copy, tmp_path / "runs", stop_after_steps=2), show_progress=False)
    assert len(calls) == 1  # nothing changed since the recorded verify: no shard read
    _flip_a_byte(copy / "shard-00001-of-00002.h5")
    with pytest.raises(DistinitError, match="shard-00001-of-00002.h5"):
        train(_config(copy, tmp_path / "runs"), show_progress=False)
    assert len(calls) == 2


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
        "-m", "distinit.pipeline", "distill", "--targets", str(tiny_targets), "--width", "tiny", "--frames", "4",
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
    assert checkpoint["step"] == 3 and checkpoint["global_batch"] == 4  # 10 train clips, 2 x 2 a step: 3 steps
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 1
