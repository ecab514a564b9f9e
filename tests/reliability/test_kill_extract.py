"""SIGKILL `distinit extract` at seeded random moments; the re-run must equal an uninterrupted run byte
for byte, verify clean, leave no temp file and no process behind (bench/faults_trials/kill_extract.py)."""

from __future__ import annotations

from bench.faults_trials import kill_extract
from reliability.support import FULL_COUNTS, assert_all_passed


def test_kill_at_random_moments_then_rerun_gives_identical_shards(tmp_path):
    # One decode worker: a killed runner's worker once lived on, blocked on its result pipe.
    report = kill_extract.run(tmp_path, trials=20 if FULL_COUNTS else 2, seed=11, workers_choices=(1,))
    assert len(report.trials) == (21 if FULL_COUNTS else 3)  # + the planted temp files of a kill inside a small write
    assert_all_passed(report)
