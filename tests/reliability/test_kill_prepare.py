"""SIGKILL `distinit prepare` at seeded random moments, with one and two encoders; each re-run must end with the
bytes of an uninterrupted run and leave no temp file and no process behind (tests/test_prepare.py runs 3 trials)."""

from __future__ import annotations

import pytest

from reliability.support import FULL_COUNTS
from test_prepare import kill_and_resume, sources  # noqa: F401  (`sources` is the fixture of tiny videos)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_prepare_at_random_moments_then_rerun_gives_identical_files(sources, tmp_path, workers):  # noqa: F811
    trials = 20 if FULL_COUNTS else 3  # seeds 100-102, after tests/test_prepare.py's own 3: CI's minutes are counted
    assert kill_and_resume(sources, tmp_path, range(100, 100 + trials), workers=workers) == []
