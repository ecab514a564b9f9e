"""The cluster recipes (README, docs/cluster.md) against a real one-node SLURM (tests/slurm_cluster.py), on the reduced demo: the
array extract with its afterok finalize writes the shards one `make extract` writes; distill as two srun tasks, each
a torchrun node of one process (gloo, c10d rendezvous), is sent USR1 mid-run, requeues itself and ends with the
weights of an uninterrupted run; make then knows what the cluster ran (only eval would run), and the eval fan-out
(one array task per (split, seed) and a report job) leaves `make eval-hmdb` nothing to do."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from slurm_cluster import FINAL_STATES
from test_make_demo import REDUCED, stages_run

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml")
# Long enough to be signalled mid-run: several epochs of one clip a video, a step record every step.
DISTILL = REDUCED["DISTILL_SET"].replace("epochs=1", "epochs=4") + " batch_size=4 global_batch=8 log_every_steps=1"
CLUSTER = {**REDUCED, "DISTILL_SET": DISTILL, "DISTILL_ARGS": "--device cpu", "SEEDS": "0,1",
           "EXTRACT_SBATCH": "", "EVAL_SBATCH": "", "SHARDS": "2", "GPUS_PER_NODE": "1",
           "DISTILL_SBATCH": "--ntasks=2 --ntasks-per-node=2 --cpus-per-task=1"}


def workdir_copy(path: Path) -> Path:
    """What a clone has where the recipes run: the Makefile, configs, the sbatch files (the venv stays the repo's)."""
    path.mkdir()
    shutil.copytree(REPO / "configs", path / "configs")
    (path / "pipeline").symlink_to(REPO / "pipeline")  # the sbatch files (distinit itself is the venv's editable install)
    for name in COPIED:
        shutil.copy2(REPO / name, path / name)  # copy2 keeps the old mtimes: setup stays done
    return path


def make(slurm, workdir: Path, *arguments: str, dry_run: bool = False, **changes: str) -> str:
    variables = [f"{name}={value}" for name, value in {**CLUSTER, **changes}.items()]
    command = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "-o", str(REPO / ".venv" / ".installed"),
               *arguments, f"VENV={REPO / '.venv'}", *variables]
    environment = {**slurm.env, "OMP_NUM_THREADS": "1", "RDZV_PORT": "29561"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def job_ids(output: str) -> list[str]:
    return re.findall(r"job (\d+)", output)


def wait_completed(slurm, job: str, workdir: Path, timeout: float = 300) -> None:
    """Until every task of the job has ended, or its dependency failed (such a job would wait for ever)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        records = slurm.job_records(job)
        states = {record.get("JobState", "?") for record in records}
        if any(record.get("Reason") == "DependencyNeverSatisfied" for record in records):
            state = "DependencyNeverSatisfied"
        elif states and states <= FINAL_STATES:
            state = ",".join(sorted(states))
        if state:
            break
        time.sleep(0.5)
    logs = "".join(path.read_text()[-2000:] for path in sorted(workdir.glob("slurm-*.out")))
    assert state == "COMPLETED", f"job {job}: {state}\n{logs}"


def shard_hashes(workdir: Path) -> dict[str, bytes]:
    folder = workdir / "targets" / "demo" / (workdir / "targets" / "demo" / "latest").read_text().strip()
    return {f"{folder.name}/{path.name}": path.read_bytes() for path in sorted(folder.glob("shard-*.h5"))}


def final_weights(workdir: Path, runs: str = "runs/demo/distill") -> dict[str, torch.Tensor]:
    run = workdir / runs / (workdir / runs / "latest").read_text().strip()
    return torch.load(run / "checkpoint-last.pt", weights_only=False)["model"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_cluster_recipes_run_each_stage_and_make_adopts_them(slurm, tmp_path):
    cluster = workdir_copy(tmp_path / "cluster")
    alone = workdir_copy(tmp_path / "alone")

    # Stage one: an array of 2 tasks, then the finalize job after them; the same shards as one `make extract`.
    submitted = make(slurm, cluster, "submit-extract")
    array, finalize = job_ids(submitted)
    wait_completed(slurm, finalize, cluster)
    assert slurm.wait_for(array) == "COMPLETED"
    # The reference by hand, without make: make then adopts it (its sealed folder records the key make wants).
    make(slurm, alone, "demo-data")
    sets = [word for pair in CLUSTER["EXTRACT_SET"].split() for word in ("--set", pair)]
    subprocess.run([str(REPO / ".venv" / "bin" / "distinit"), "extract", "--config", "configs/extract.yaml", "--data",
                    "demo", "--root", "data/demo", *sets, "--no-progress"], cwd=alone, check=True, timeout=600,
                   env={**slurm.env, "OMP_NUM_THREADS": "1"})  # the teachers' float bits depend on the thread count
    assert shard_hashes(cluster) == shard_hashes(alone) and len(shard_hashes(cluster)) == 2
    assert stages_run(make(slurm, alone, "distill", dry_run=True)) == {"distill"}
    assert stages_run(make(slurm, cluster, "extract")) == set()  # finalize recorded it done for make

    # Stage two: two srun tasks, each a torchrun node of one process; USR1 once it has taken two steps.
    (job,) = job_ids(make(slurm, cluster, "submit-distill"))
    log = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        logs = list((cluster / "runs" / "demo" / "distill").glob("*/log.jsonl"))
        steps = [json.loads(line) for line in logs[0].read_text().splitlines()] if logs else []
        if any(record.get("step", 0) >= 2 for record in steps):
            log = logs[0]
            break
        assert slurm.wait_for(job, states=("PENDING", "RUNNING", "CONFIGURING"), timeout=60) != "FAILED"
        time.sleep(0.2)
    assert log is not None, f"distill job {job} logged no step: {slurm.describe()}"
    slurm.run(["scancel", "--signal=USR1", job])
    # The workers save at the step boundary and requeue the job; it comes back (Restarts=1) and finishes.
    deadline = time.monotonic() + 60
    while not any(record.get("Restarts") == "1" for record in slurm.job_records(job)):
        assert time.monotonic() < deadline, f"job {job} was not requeued: {slurm.job_records(job)}"
        time.sleep(0.2)
    slurm.start_now(job)
    wait_completed(slurm, job, cluster)
    output = (cluster / f"slurm-{job}.out").read_text()
    assert "distill stopped by SIGUSR1" in output and f"requeued as SLURM job {job}" in output, output[-3000:]
    assert "resumed" in output or "written by 2 processes" not in output
    # An uninterrupted run of the same recipe (two processes, here under torchrun alone) trains the same weights.
    make(slurm, alone, "distill", NPROC="2", TORCHRUN_ARGS="--master-port 29563", DISTILL_OUT="runs/demo/reference")
    signalled, reference = final_weights(cluster), final_weights(alone, "runs/demo/reference")
    assert signalled.keys() == reference.keys()
    assert all(torch.equal(signalled[name], value) for name, value in reference.items())

    # Make knows what the cluster ran: after it, eval-hmdb would run eval only.
    assert stages_run(make(slurm, cluster, "eval-hmdb", dry_run=True)) == {"eval-hmdb"}

    # Stage three fanned out: one array task per (split, seed), then the report job; make has nothing left to do.
    submitted = make(slurm, cluster, "submit-eval")
    tuning, array, report = job_ids(submitted)
    assert "(1 tunings)" in submitted and "(2 runs)" in submitted  # the demo tunes: split 1, then seeds 0 and 1
    wait_completed(slurm, report, cluster, timeout=600)
    # The report job trained nothing (no progress bar of a run): the runs were where a whole eval looks for them.
    assert "split 1 seed" not in (cluster / f"slurm-{report}.out").read_text()
    assert "split 1 seed 1" in (cluster / f"slurm-{array}_1.out").read_text()
    results = json.loads((cluster / "results" / "demo" / "eval-hmdb" / "results.json").read_text())
    assert sorted(run["seed"] for run in results["runs"]) == [0, 1]
    assert stages_run(make(slurm, cluster, "eval-hmdb")) == set()
    assert os.path.getsize(cluster / "results" / "demo" / "eval-hmdb" / "RESULTS.txt") > 0
