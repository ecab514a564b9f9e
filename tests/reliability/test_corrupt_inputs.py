"""A folder of good clips and every kind of bad file: extraction finishes, lists each bad file with its
reason and extracts each good one (bench/faults_trials/corrupt_inputs.py)."""

from __future__ import annotations

from bench.faults_trials import corrupt_inputs
from reliability.support import assert_all_passed


def test_mixed_folder_extracts_the_good_and_lists_the_bad(tmp_path):
    report = corrupt_inputs.run(tmp_path)
    names = {trial.name for trial in report.trials}
    assert {"bad zero_bytes", "bad decode_hangs", "bad named_pipe", "good one_frame", "good huge_8000x8000"} <= names
    assert_all_passed(report)
