"""What the reliability tests share: the full-counts switch and the all-trials-passed assertion."""

from __future__ import annotations

import os

# The counts (20 extract kills, 5 distill kills, ...), as bench/faults.py runs them; off by default
# so the suite stays within a few minutes on a small CI machine.
FULL_COUNTS = os.environ.get("DISTINIT_RELIABILITY_FULL") == "1"


def assert_all_passed(report) -> None:
    """Fail with every failed trial's reason, and the kind's notes (where kills landed, ...)."""
    failures = report.failures()
    assert not failures, (
        f"{report.kind}: {len(failures)} of {len(report.trials)} trials failed ({report.notes}):\n" + "\n".join(failures)
    )
