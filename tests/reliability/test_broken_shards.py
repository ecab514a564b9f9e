"""Damaged targets: verify names the shard; distill refuses with one line naming it and writes nothing
(bench/faults_trials/broken_shards.py)."""

from __future__ import annotations

from bench.faults_trials import broken_shards
from reliability.support import FULL_COUNTS, assert_all_passed


def test_each_kind_of_damage_is_named_and_refused(tmp_path):
    report = broken_shards.run(tmp_path, flips=20 if FULL_COUNTS else 1, seed=3)
    assert len(report.trials) == (24 if FULL_COUNTS else 5)
    assert_all_passed(report)
