"""Preemption: the signal a scheduler sends before it stops a job, turned into a flag the stages check.

SLURM sends SIGTERM when it preempts a job or its time runs out (then SIGKILL after `KillWait` seconds), and
the signal a job asked for with `--signal` (the recipes ask for USR1, a few minutes ahead). Python's default
handlers would end the process mid-step; instead `PreemptionWatch` records the signal and the stage stops at
its next clean point: distill after the current step (all ranks agree, save, requeue), extract after the current
video (completed shards kept). The stage then raises `Preempted`: one line saying what was kept and how to go on.

`requeue_job` asks SLURM to put this job back in the queue (`scontrol requeue`): the requeued job runs the same
command, which resumes. Outside SLURM it does nothing; DISTINIT_REQUEUE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

from distinit.pipeline.errors import DistinitError

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(DistinitError):
    """The stage stopped at a clean point after a preemption signal; what it finished is kept."""


class PreemptionWatch:
    """While active (`with PreemptionWatch() as watch:`), SIGTERM and SIGUSR1 set `watch.signal` instead of ending
    the process. Handlers can only be set from the main thread; elsewhere the watch stays inactive (never set)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def signal_name(self) -> str:
        return self.signal.name if self.signal is not None else ""

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(number)
            logger.warning("received %s: stopping at the next clean point", self.signal.name)

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def ignore_preemption_signals() -> None:
    """For a helper process (a loader worker) whose parent handles preemption: SLURM signals every process of a job
    step, and torch's loader workers would die of SIGTERM (their handler kills them unless it came from their parent),
    taking the step down before the parent can save. The parent stops them when it stops."""
    for number in PREEMPTION_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def slurm_job_id() -> str | None:
    """This job's id as scontrol names it: `ARRAYJOB_TASK` for an array task, else SLURM_JOB_ID; None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_job() -> str | None:
    """Ask SLURM to requeue this job (it must have been submitted with --requeue); returns the job id when asked,
    None outside SLURM, with DISTINIT_REQUEUE=0, or when scontrol refused (logged: the user re-submits by hand)."""
    job = slurm_job_id()
    if job is None or os.environ.get("DISTINIT_REQUEUE", "1") == "0":
        return None
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        logger.warning("SLURM job %s: no scontrol on PATH to requeue it; submit the same job again to resume", job)
        return None
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
        logger.warning("SLURM job %s: scontrol requeue failed (%s); submit the same job again to resume", job, reason)
        return None
    logger.warning("SLURM job %s requeued: it will run the same command again and resume", job)
    return job


def preempted_message(stage: str, signal_name: str, kept: str, requeued: str | None) -> str:
    """`distill stopped by SIGUSR1: <kept>; requeued as SLURM job 12 (it resumes)` or `...; run the same command
    again to resume`."""
    then = f"requeued as SLURM job {requeued}, which resumes" if requeued else "run the same command again to resume"
    return f"{stage} stopped by {signal_name}: {kept}; {then}"
