"""Bad command lines and hostile output folders: one `Error:` line, non-zero exit, earlier outputs
untouched (bench/faults_trials/bad_cli.py). By default one case per item of the issue's list (a
distill or eval start-up costs ~5 s, so few of those); DISTINIT_RELIABILITY_FULL=1 runs all of them."""

from __future__ import annotations

from bench.faults_trials import bad_cli
from reliability.support import FULL_COUNTS, assert_all_passed

ONE_PER_ITEM = (
    "extract: unknown dataset", "distill: unknown student",  # unknown names
    "extract: missing root",  # missing roots
    "extract: malformed HMDB-51 split file",  # malformed split files
    "extract: --shard 3/2",
    "extract: --shard-count 0", "extract: --batch-size -1",  # zero and negative sizes
    "extract: --out is a file", "manifest: --out is a folder",
    "extract: read-only --out",
    "extract: full disk (RLIMIT_FSIZE)", "distill: full disk (RLIMIT_FSIZE)",  # HDF5 and torch.save writes
)


def test_bad_input_gives_one_line_error_and_leaves_outputs_untouched(tmp_path):
    report = bad_cli.run(tmp_path, only=None if FULL_COUNTS else ONE_PER_ITEM)
    assert_all_passed(report)
