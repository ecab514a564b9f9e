"""A scheduler's preemption signal (issue 20, item 2): `distinit extract` sent SIGUSR1 or SIGTERM, as SLURM sends it,
to its whole process group (decode workers, ffmpeg and multiprocessing's resource tracker included) stops after the
current video with one line and exit status 1, keeps the shards it finished, and the re-run writes only the rest,
ending byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from bench.faults_trials.common import (
    CommandResult, make_video_folder, one_line_error_problem, run_cli, start_cli, temporary_files, wait_for_group_to_exit,
)
from bench.faults_trials.kill_extract import SHARD_COUNT, VIDEO_COUNT, extract_arguments
import distinit.extract.run as run_module
from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.preemption import Preempted

POLL_SECONDS = 0.002
RUN_TIMEOUT_SECONDS = 180.0
STOPPED = re.compile(
    r"Error: extract stopped by (SIG\w+): (\d) shards? of this part finished and kept, "
    r"(?:shard (\d) abandoned|none abandoned); run the same command again to resume"
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_video_folder(tmp_path_factory.mktemp("videos"), VIDEO_COUNT)


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> dict[str, str]:
    """sha256 of each shard of an uninterrupted run (a subprocess, as every run here: one torch thread, as in
    bench.faults_trials.common; a run with more threads gives other float bits)."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli(extract_arguments(videos, out, workers=1), timeout=RUN_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr
    return shard_hashes(out)


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    """No `scontrol requeue` from a test, even one run inside a SLURM job."""
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DISTINIT_REQUEUE", "0")


def shard_hashes(out: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(out.glob("folder/*/shard-*.h5"))}


def shard_stamps(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each shard: a rewritten shard is a new file (renamed into place)."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.glob("folder/*/shard-*.h5")}


def wait_until_a_later_shard_starts(process, out: Path) -> None:
    """Until shard 0 is sealed and a later one is being written (its lease exists): the signal then lands mid-run."""
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < RUN_TIMEOUT_SECONDS:
        if list(out.glob("folder/*/.shard-0000[12]-*.lease")) or list(out.glob("folder/*/shard-00001-*.h5")):
            return
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"the run ended (exit {process.poll()}) before a second shard started: nothing to preempt")


@pytest.mark.slow  # ~10 s each on 2 cores: two CLI runs, plus the reference run once
@pytest.mark.parametrize("signal_number", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_preempted_extract_keeps_finished_shards_and_the_rerun_writes_only_the_rest(
    videos, reference, tmp_path, signal_number
):
    out = tmp_path / "out"
    arguments = extract_arguments(videos, out, workers=1)
    log_path = tmp_path / "extract.log"
    process = start_cli(arguments, log_path=log_path)
    try:
        wait_until_a_later_shard_starts(process, out)
        os.killpg(process.pid, signal_number)  # as SLURM signals every process of the job
        process.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        survivors = wait_for_group_to_exit(process.pid, timeout=10.0)
    log = log_path.read_text()
    assert survivors == []
    assert one_line_error_problem(CommandResult(process.returncode, "", log, 0.0)) is None, log
    assert process.returncode == 1
    stopped = STOPPED.fullmatch(log.strip().splitlines()[-1])
    assert stopped is not None and stopped.group(1) == signal_number.name, log
    assert "decode worker ended" not in log and "resource_tracker" not in log, log  # the workers ignored the signal

    kept = shard_hashes(out)
    assert len(kept) == int(stopped.group(2)) and 0 < len(kept) < SHARD_COUNT
    assert all(reference[name] == digest for name, digest in kept.items())
    assert temporary_files(out) == [] and list(out.glob("folder/*/.*.lease")) == []  # the abandoned shard's too
    before = shard_stamps(out)

    rerun = run_cli(arguments, timeout=RUN_TIMEOUT_SECONDS)
    assert rerun.returncode == 0, rerun.stderr
    rest = sorted(set(range(SHARD_COUNT)) - {int(name[6:11]) for name in kept})
    assert f"wrote shards {rest} ({len(kept)} already done)" in rerun.stdout
    after = shard_stamps(out)
    assert {name: after[name] for name in before} == before  # the kept shards were not rewritten
    assert shard_hashes(out) == reference


def test_preemption_requeues_the_slurm_job_after_cleaning_up(videos, tmp_path, monkeypatch):
    """In this process, so the requeue can be watched: it comes once the abandoned shard's files are gone."""
    config = ExtractConfig(data="folder", root=str(videos), out=str(tmp_path), shard_count=SHARD_COUNT, workers=0,
                           max_frames_per_video=3, batch_size=2)
    real_teach, calls, seen_at_requeue = run_module.teach, [], []

    def teach_then_signal(teachers, decoded):
        calls.append(len(decoded))
        if len(calls) == 2:  # mid-way through shard 0
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_teach(teachers, decoded)

    def requeue() -> str:
        seen_at_requeue.extend(path.name for path in tmp_path.glob("folder/*/.*") if path.is_file())
        return "77_3"

    monkeypatch.setattr(run_module, "teach", teach_then_signal)
    monkeypatch.setattr(run_module, "requeue_job", requeue)
    with pytest.raises(Preempted) as stopped:
        run_extraction(config, show_progress=False)
    assert str(stopped.value) == (
        "extract stopped by SIGUSR1: 0 shards of this part finished and kept, shard 0 abandoned; "
        "requeued as SLURM job 77_3, which resumes"
    )
    assert seen_at_requeue == [] and list(tmp_path.glob("folder/*/shard-*")) == []  # no temp file, no lease
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the watch is over
