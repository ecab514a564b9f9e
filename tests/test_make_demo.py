"""`make demo` end to end on a reduced demo, then again with nothing changed (slow: about a minute)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

REDUCED = [
    "DEMO_SET=pool_clips_from_videos=2 pool_clips_from_photos=3 pool_clip_seconds=2.0 "
    "action_classes=[pan_left,zoom_in] videos_per_class=5 action_clip_seconds=1.0",
    "EXTRACT_SET=max_frames_per_video=3 shard_count=2",
    "DISTILL_SET=epochs=1 clips_per_video=1 val_fraction=0.2",
    "EVAL_SET=epochs=1 splits=[1] test_clips=2 batch_size=4",  # 6 train videos: batches drop the last partial one
    "SEEDS=0",
    "INITS=scratch,runs/demo/distill",
]
STAGE_COMMANDS = ("distinit demo-data", "distinit extract", "distinit distill", "distinit compare")


def make(workdir: Path, *arguments: str) -> str:
    result = subprocess.run(["make", "--no-print-directory", *arguments, f"VENV={REPO / '.venv'}", *REDUCED],
                            cwd=workdir, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_demo_runs_every_stage_once_then_nothing(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)  # copy2 keeps the old mtimes: setup stays done

    first = make(tmp_path, "demo")
    for command in STAGE_COMMANDS:
        assert command in first
    table = first[first.index("| init |"):]
    assert "scratch [r2plus1d_18 tiny]" in table and "DistInit [r2plus1d_18 tiny]" in table
    assert (tmp_path / "results" / "demo" / "RESULTS.md").is_file()

    second = make(tmp_path, "demo")
    assert not [command for command in STAGE_COMMANDS if command in second]
    assert "| init |" in second

    status = make(tmp_path, "status")
    assert [line.split()[1:4] for line in status.strip().splitlines()] == [["up", "to", "date"]] * 4
