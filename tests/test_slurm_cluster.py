"""The `slurm` fixture runs real jobs: batch output, an array with an afterok job, a two-task step, requeue on USR1,
and which processes each form of `scancel --signal=USR1` reaches (what the launch recipes rely on)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

# A process of the signal test: logs "ROLE PROCID SIGNAL" for each USR1 it gets, until the folder holds `stop`.
SIGNAL_LOGGER = """\
import os, signal, subprocess, sys, time
role, folder = sys.argv[1], sys.argv[2]
def log(signum, frame):
    with open(os.path.join(folder, "signals.log"), "a") as out:
        out.write(f"{role} {os.environ.get('SLURM_PROCID', '-')} {signal.Signals(signum).name}\\n")
signal.signal(signal.SIGUSR1, log)
if role == "task":
    subprocess.Popen([sys.executable, __file__, "child", folder])
open(os.path.join(folder, f"ready-{role}-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(folder, "stop")):
    time.sleep(0.05)
"""


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -u\n" + body)
    path.chmod(0o755)
    return path


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.05)
    return result


def test_batch_job_writes_its_output(slurm, tmp_path):
    script = write_script(tmp_path / "hello.sh", 'echo "hello from job $SLURM_JOB_ID on $SLURMD_NODENAME"\n')
    job = slurm.submit("-o", tmp_path / "hello.out", script)
    assert slurm.wait_for(job, timeout=30) == "COMPLETED"
    assert (tmp_path / "hello.out").read_text().startswith(f"hello from job {job} on ")


def test_afterok_job_runs_after_every_array_task(slurm, tmp_path):
    array = slurm.submit("--array=0-2", "-o", tmp_path / "task_%a.out",
                         "--wrap", f"sleep 0.5; date +%s.%N > {tmp_path}/end_$SLURM_ARRAY_TASK_ID")
    final = slurm.submit(f"--dependency=afterok:{array}", "-o", tmp_path / "final.out",
                         "--wrap", f"date +%s.%N > {tmp_path}/start_final")
    assert slurm.wait_for(final, timeout=30) == "COMPLETED"
    assert slurm.wait_for(array, timeout=5) == "COMPLETED"
    task_ends = [float((tmp_path / f"end_{task}").read_text()) for task in range(3)]
    assert float((tmp_path / "start_final").read_text()) > max(task_ends)


def test_srun_runs_two_tasks_in_a_batch_job(slurm, tmp_path):
    script = write_script(tmp_path / "two.sh", "srun -N1 -n2 bash -c 'echo task $SLURM_PROCID of $SLURM_NTASKS'\n")
    job = slurm.submit("-N1", "-n2", "-o", tmp_path / "two.out", script)
    assert slurm.wait_for(job, timeout=30) == "COMPLETED"
    assert sorted((tmp_path / "two.out").read_text().splitlines()) == ["task 0 of 2", "task 1 of 2"]


def test_step_that_traps_usr1_requeues_its_job_and_runs_again(slurm, tmp_path):
    log = tmp_path / "runs.log"
    step = write_script(tmp_path / "step.sh", f"""\
echo "step restart=${{SLURM_RESTART_COUNT:-0}}" >> {log}
if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then exit 0; fi
trap 'echo requeue >> {log}; scontrol requeue $SLURM_JOB_ID; exit 0' USR1
touch {tmp_path}/step-ready
while true; do sleep 0.1; done
""")
    batch = write_script(tmp_path / "batch.sh", f"srun -n1 {step}\n")
    job = slurm.submit("--requeue", "-n1", "-o", tmp_path / "batch.out", batch)
    wait_until(lambda: (tmp_path / "step-ready").exists(), 30, "step start")
    slurm.run(["scancel", "--signal=USR1", job])
    signalled = time.time()
    requeued = wait_until(lambda: [record for record in slurm.job_records(job)
                                   if record["Restarts"] == "1" and record["JobState"] == "PENDING"], 15, "requeue")
    # A requeued job may start cred_expire + 1 s later (6 s here, 121 s with Slurm's default): not before.
    assert requeued[0]["Reason"] == "BeginTime"
    eligible = time.mktime(time.strptime(requeued[0]["EligibleTime"], "%Y-%m-%dT%H:%M:%S"))
    assert 3 <= eligible - signalled <= 9
    slurm.start_now(job)
    assert slurm.wait_for(job, timeout=15) == "COMPLETED"
    assert time.time() - signalled < eligible - signalled  # start_now did not wait for the begin time
    assert log.read_text().splitlines() == ["step restart=0", "requeue", "step restart=1"]
    assert slurm.job_records(job)[0]["Restarts"] == "1"


def test_which_processes_each_scancel_signal_reaches(slurm, tmp_path):
    """Without options: every process of every step (srun's tasks and their children under proctrack/linuxproc),
    not the batch shell. --batch: the batch shell only. --full: the batch shell, its children and the steps."""
    logger = tmp_path / "logger.py"
    logger.write_text(SIGNAL_LOGGER)
    python = sys.executable
    batch = write_script(tmp_path / "batch.sh", f"""\
trap 'echo "batch-shell - SIGUSR1" >> {tmp_path}/signals.log' USR1
{python} {logger} batch-child {tmp_path} &
srun -n2 {python} {logger} task {tmp_path} &
while [ ! -e {tmp_path}/stop ]; do sleep 0.1; done
wait
""")
    job = slurm.submit("-n2", "-o", tmp_path / "batch.out", batch)
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 5, 30, "five processes ready")

    def receivers_of(*scancel_options: str, expected: int) -> list[str]:
        log = tmp_path / "signals.log"
        log.unlink(missing_ok=True)
        slurm.run(["scancel", "--signal=USR1", *scancel_options, job])
        wait_until(lambda: log.exists() and len(set(log.read_text().splitlines())) >= expected, 10, "signals")
        time.sleep(0.5)  # any process the signal reaches late is counted too
        return sorted(set(log.read_text().splitlines()))

    step_processes = ["child 0 SIGUSR1", "child 1 SIGUSR1", "task 0 SIGUSR1", "task 1 SIGUSR1"]
    assert receivers_of(expected=4) == step_processes
    assert receivers_of("--batch", expected=1) == ["batch-shell - SIGUSR1"]
    assert receivers_of("--full", expected=6) == sorted(
        step_processes + ["batch-child 0 SIGUSR1", "batch-shell - SIGUSR1"])
    (tmp_path / "stop").touch()
    assert slurm.wait_for(job, timeout=15) == "COMPLETED"
