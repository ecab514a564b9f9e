"""extract, distill and eval write only under their --out (bench/faults_trials/write_scope.py)."""

from __future__ import annotations

from bench.faults_trials import write_scope
from reliability.support import assert_all_passed


def test_stages_write_only_under_their_out(tmp_path):
    report = write_scope.run(tmp_path)
    assert len(report.trials) == 3
    assert_all_passed(report)
