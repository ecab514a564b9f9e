"""`make demo` end to end on a reduced demo, then again with nothing changed (slow: about a minute)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

REDUCED = {
    "DEMO_SET": "pool_clips_from_videos=2 pool_clips_from_photos=3 pool_clip_seconds=2.0 "
                "action_classes=[pan_left,zoom_in] videos_per_class=5 action_clip_seconds=1.0",
    "EXTRACT_SET": "max_frames_per_video=3 shard_count=2",
    "DISTILL_SET": "epochs=1 clips_per_video=1 val_fraction=0.2",
    "EVAL_SET": "epochs=1 splits=[1] test_clips=2 batch_size=4",  # 6 train videos: batches drop the last partial one
    "SEEDS": "0",
    "INITS": "scratch,runs/demo/distill",
}
STAGE_COMMANDS = {"demo-data": "distinit demo-data", "extract": "distinit extract", "distill": "distinit distill",
                  "compare": "distinit compare", "eval-hmdb": "distinit eval"}


def make(workdir: Path, *arguments: str, **changes: str) -> str:
    variables = [f"{name}={value}" for name, value in {**REDUCED, **changes}.items()]
    # -o: setup counts as done, so a test never reinstalls the repository's venv from its temporary copy
    command = ["make", "--no-print-directory", "-o", str(REPO / ".venv" / ".installed"), *arguments,
               f"VENV={REPO / '.venv'}", *variables]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages_run(output: str) -> set[str]:
    return {stage for stage, command in STAGE_COMMANDS.items() if command + " " in output}


def states(status_output: str) -> dict[str, str]:
    """`make status` lines -> {stage: its state}."""
    lines = [line.split(None, 1) for line in status_output.strip().splitlines()]
    return {stage: rest.split(":")[0].split("  [")[0] for stage, rest in lines}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists(),
                    reason="needs make and the project's .venv (make setup)")
def test_make_runs_each_stage_once_and_then_only_what_changed(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)  # copy2 keeps the old mtimes: setup stays done

    # From an empty folder, `make eval-hmdb` runs every stage it reads first.
    first = make(tmp_path, "eval-hmdb")
    assert stages_run(first) == {"demo-data", "extract", "distill", "eval-hmdb"}
    assert "video top-1" in first and (tmp_path / "results" / "demo" / "eval-hmdb" / "results.json").is_file()
    assert stages_run(make(tmp_path, "eval-hmdb")) == set()

    # A distill option re-runs distill and what scores its output, nothing before it; status says why first.
    changed = {"DISTILL_SET": REDUCED["DISTILL_SET"] + " lr=0.01"}
    why = {line.split()[0]: line for line in make(tmp_path, "status", **changed).strip().splitlines()}
    assert "stale: option lr: 0.003 -> 0.01" in why["distill"] and "up to date" in why["extract"]
    assert "stale: upstream distill changed" in why["eval-hmdb"] and "missing: never ran here" in why["compare"]
    assert "not set up" in why["eval-ucf"] and "UCF_ROOT=" in why["eval-ucf"]
    assert stages_run(make(tmp_path, "eval-hmdb", **changed)) == {"distill", "eval-hmdb"}
    assert states(make(tmp_path, "status", **changed)) == {
        "demo-data": "up to date", "extract": "up to date", "distill": "up to date", "compare": "missing",
        "eval-hmdb": "up to date", "eval-ucf": "not set up"}
    assert states(make(tmp_path, "status"))["distill"] == "stale"  # against the options it last ran with

    # `make demo` ends with the comparison, reusing every stage before it.
    demo = make(tmp_path, "demo", **changed)
    assert stages_run(demo) == {"compare"}
    table = demo[demo.index("| init |"):]
    assert "scratch [r2plus1d_18 tiny]" in table and "DistInit [r2plus1d_18 tiny]" in table
    second = make(tmp_path, "demo", **changed)
    assert stages_run(second) == set() and "| init |" in second
    assert set(states(make(tmp_path, "status", **changed)).values()) == {"up to date", "not set up"}
