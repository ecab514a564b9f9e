"""The reliability trials (issue 7): every test in this folder carries the `reliability` marker.

The trial code lives in bench/faults_trials/ (bench/faults.py runs it with the issue's full counts and
prints the table); these tests run the same code with smaller counts so CI stays within a few minutes.
DISTINIT_RELIABILITY_FULL=1 runs the full counts here too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # `bench` is a folder of scripts, not an installed package


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
