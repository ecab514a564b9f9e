"""SIGKILL `distinit distill` at seeded random steps; the resumed run must end with the weights of an
uninterrupted run, tensor for tensor, and a clean log (bench/faults_trials/kill_distill.py)."""

from __future__ import annotations

from bench.faults_trials import kill_distill
from reliability.support import FULL_COUNTS, assert_all_passed


def test_kill_at_random_steps_then_resume_gives_identical_weights(tmp_path):
    report = kill_distill.run(tmp_path, trials=5 if FULL_COUNTS else 1, seed=5, workers_choices=(1, 0))
    assert len(report.trials) == (6 if FULL_COUNTS else 2)  # + the kill just after an epoch's log record
    assert_all_passed(report)
