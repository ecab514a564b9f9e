"""Distill under preemption: a SIGUSR1 or SIGTERM mid-run saves at the step boundary, stops with one line, asks SLURM
to requeue (when under SLURM), and the resumed run ends with weights equal to an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distinit.distill.train as train_module
from distinit.distill.train import train
from distinit.pipeline.preemption import Preempted, PreemptionWatch, requeue_job, slurm_job_id
from test_train import _config, tiny_targets  # noqa: F401  (tiny_targets: the module's fixture)


def _signal_at_step(monkeypatch, step: int, number: int) -> None:
    """Send `number` to this process during step `step`'s loss (as SLURM would, at any moment of a step)."""
    real_call = train_module.DistillationLoss.__call__
    calls = {"count": 0}

    def signalling(self, predictions, targets):
        calls["count"] += 1
        if calls["count"] == step:
            os.kill(os.getpid(), number)
        return real_call(self, predictions, targets)

    monkeypatch.setattr(train_module.DistillationLoss, "__call__", signalling)


@pytest.mark.parametrize("number", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_saves_at_the_step_boundary_and_the_resumed_run_equals_an_uninterrupted_one(
        tiny_targets, tmp_path, monkeypatch, number):  # noqa: F811
    whole = train(_config(tiny_targets, tmp_path / "whole"), show_progress=False)
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 3, number)
        with pytest.raises(Preempted) as stopped:
            train(_config(tiny_targets, tmp_path / "cut"), show_progress=False)
    message = str(stopped.value)
    assert "\n" not in message and f"distill stopped by {signal.Signals(number).name}" in message
    assert "at step 3" in message and "run the same command again to resume" in message
    run_dir = tmp_path / "cut" / whole.run_dir.name
    assert torch.load(run_dir / "checkpoint-last.pt", weights_only=False)["step"] == 3
    assert not (tmp_path / "cut" / "latest").exists()  # not finished
    # Python's handlers are back once train returns.
    assert signal.getsignal(number) in (signal.SIG_DFL, signal.default_int_handler)
    resumed = train(_config(tiny_targets, tmp_path / "cut"), show_progress=False)
    assert resumed.step == whole.step and not resumed.stopped_early
    final = torch.load(run_dir / "checkpoint-last.pt", weights_only=False)["model"]
    reference = torch.load(whole.run_dir / "checkpoint-last.pt", weights_only=False)["model"]
    assert all(torch.equal(final[name], value) for name, value in reference.items())


def test_under_slurm_the_job_is_requeued(tmp_path, monkeypatch):
    """requeue_job runs `scontrol requeue <job>` (an array task as ARRAYJOB_TASK); refusal and DISTINIT_REQUEUE=0
    leave it to the user."""
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit ${{FAIL:-0}}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "DISTINIT_REQUEUE", "FAIL"):
        monkeypatch.delenv(variable, raising=False)
    assert slurm_job_id() is None and requeue_job() is None and not calls.exists()
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert requeue_job() == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_job() == "40_3"
    assert calls.read_text().splitlines() == ["requeue 41", "requeue 40_3"]
    monkeypatch.setenv("FAIL", "1")
    assert requeue_job() is None
    monkeypatch.setenv("DISTINIT_REQUEUE", "0")
    monkeypatch.delenv("FAIL")
    assert requeue_job() is None and len(calls.read_text().splitlines()) == 3


def test_the_watch_records_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        assert not watch.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.requested and watch.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before


def _cli(targets: Path, out: Path, **popen) -> list[str]:
    """`distinit distill` of the tiny recipe with two loader workers (they get the scheduler's signal too)."""
    return [sys.executable, "-m", "distinit.pipeline", "distill", "--targets", str(targets), "--width", "tiny", "--frames", "4",
            "--short-side", "32", "--crop", "32", "--batch-size", "2", "--epochs", "2", "--workers", "2", "--optimizer",
            "adamw", "--lr", "2e-3", "--seed", "3", "--deterministic", "--device", "cpu", "--out", str(out),
            "--no-progress", "--set", "student=r2plus1d_18", "--set", "log_every_steps=1"]


@pytest.mark.slow
def test_a_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_resumes(tiny_targets, tmp_path):  # noqa: F811
    """As SLURM signals a step: every process of the group, the loader workers included (torch's workers die of a
    SIGTERM that is not their parent's unless they leave it to the trainer)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_cli(tiny_targets, tmp_path / "whole"), capture_output=True, text=True, timeout=300,
                           env=environment)
    assert whole.returncode == 0, whole.stderr[-3000:]
    process = subprocess.Popen(_cli(tiny_targets, tmp_path / "cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any('"record": "step"' in path.read_text() for path in (tmp_path / "cut").glob("*/log.jsonl")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: distill stopped by SIGTERM: saved") and "run the same command again" in last
    resumed = subprocess.run(_cli(tiny_targets, tmp_path / "cut"), capture_output=True, text=True, timeout=300,
                             env=environment)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = (tmp_path / "whole" / "latest").read_text().strip()
    assert (tmp_path / "cut" / "latest").read_text().strip() == run
    final = torch.load(tmp_path / "cut" / run / "checkpoint-last.pt", weights_only=False)["model"]
    reference = torch.load(tmp_path / "whole" / run / "checkpoint-last.pt", weights_only=False)["model"]
    assert all(torch.equal(final[name], value) for name, value in reference.items())
