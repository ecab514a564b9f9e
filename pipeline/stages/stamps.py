"""Stamp files that let make re-run exactly the stale stages, and the `distinit status` report.

For each stage, `<stamps>/<stage>.key` holds its current inputs and key (pipeline/stages/graph.py) and is
rewritten only when the key changes, so its modification time is "when this stage's inputs last
changed". A stage's make rule depends on its `.key` (and on the upstream `.done`) and, once the stage
has succeeded, copies `.key` to `<stage>.done`: the record of what the outputs were made from.
Touching a config or a video without changing its content leaves every `.key` alone, so nothing re-runs.
A `.done` whose output folder has since disappeared is removed, so make re-runs that stage.

What ran without make (an sbatch array extract, a multi-node distill, a run by hand) is adopted: extract and
distill record the key they were made under in the folder they seal (STAGE_RECORD, computed from their own config
by the functions pipeline/stages/graph.py plans with), and a stage whose sealed output records the key make wants is
done, however it was launched: `.done` is written for it, nothing re-runs and nothing is re-verified.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.stages.graph import STAGES, NotSetUp, StageInputs, stage_key


@dataclasses.dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str  # "up to date" | "stale" | "missing" | "not set up"
    reasons: tuple[str, ...]
    key: str


def key_path(stamps_dir: str | Path, stage: str) -> Path:
    return Path(stamps_dir) / f"{stage}.key"


def done_path(stamps_dir: str | Path, stage: str) -> Path:
    return Path(stamps_dir) / f"{stage}.done"


def needs_path(stamps_dir: str | Path, stage: str) -> Path:
    return Path(stamps_dir) / f"{stage}.needs"


# In a sealed output folder (a targets folder, a distill run): the stage, key and inputs it was made under.
STAGE_RECORD = "stage.json"


def write_stage_record(folder: str | Path, stage: str, inputs: dict[str, Any]) -> None:
    """Record in `folder` (sealed by `stage`) the key it was made under, for make to adopt (`adopted_stages`)."""
    record = {"stage": stage, "key": stage_key(inputs), "inputs": inputs}
    atomic_write_text(Path(folder) / STAGE_RECORD, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def sealed_key(stage: StageInputs) -> str | None:
    """The key recorded in the folder the stage's `latest` pointer names; None when there is none."""
    if stage.output.name != "latest":
        return None
    try:
        folder = stage.output.parent / stage.output.read_text().strip()
    except OSError:
        return None
    record = read_stamp(folder / STAGE_RECORD)
    return record["key"] if record is not None and record.get("stage") == stage.stage else None


def stamp_record(stage: StageInputs) -> dict[str, Any]:
    return {"stage": stage.stage, "key": stage.key, "inputs": stage.inputs, "output": str(stage.output)}


def _stamp_text(stage: StageInputs) -> str:
    return json.dumps(stamp_record(stage), indent=1, sort_keys=True, default=str) + "\n"


def read_stamp(path: Path) -> dict[str, Any] | None:
    """A stamp's record, or None when it is missing or unreadable (both mean: run the stage)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "key" in record else None


def update_stamps(plan: list[StageInputs], stamps_dir: str | Path, adopted: list[str] | None = None) -> list[str]:
    """Rewrite the `.key` of every stage whose key changed; drop `.done` files whose output is gone; write `.done`
    for a stage whose sealed output records its key (made without make), appending its name to `adopted`.

    Returns the stages whose `.key` was rewritten.
    """
    Path(stamps_dir).mkdir(parents=True, exist_ok=True)
    _remove_stamps_of_old_stages(stamps_dir)
    changed = []
    for stage in plan:
        path = key_path(stamps_dir, stage.stage)
        current = read_stamp(path)
        if current is None or current["key"] != stage.key:
            atomic_write_text(path, _stamp_text(stage))
            changed.append(stage.stage)
            _age_behind_done(path, done_path(stamps_dir, stage.stage), stage.key)
        needs = needs_path(stamps_dir, stage.stage)
        wanted = " ".join(stage.needs) + "\n"
        if not needs.is_file() or needs.read_text() != wanted:
            atomic_write_text(needs, wanted)
        if not stage.output.exists():
            done_path(stamps_dir, stage.stage).unlink(missing_ok=True)
            continue
        if _adoptable(stage, read_stamp(done_path(stamps_dir, stage.stage))):
            # Written after the .key above and after the upstream stages' .done (the plan is upstream first).
            atomic_write_text(done_path(stamps_dir, stage.stage), _stamp_text(stage))
            if adopted is not None:
                adopted.append(stage.stage)
    return changed


def _adoptable(stage: StageInputs, done: dict[str, Any] | None) -> bool:
    """Whether make has no record of the stage under its key but its sealed output records that key (made without
    make: adopt it)."""
    return stage.output.exists() and (done is None or done["key"] != stage.key) and sealed_key(stage) == stage.key


def _remove_stamps_of_old_stages(stamps_dir: str | Path) -> None:
    """Stamps of a stage this version does not have (`eval`, now `compare`) would only confuse a reader."""
    for path in Path(stamps_dir).iterdir():
        if path.suffix in (".key", ".done", ".needs") and path.stem not in STAGES:
            path.unlink(missing_ok=True)


def _age_behind_done(key_file: Path, done_file: Path, key: str) -> None:
    """A key changed back to what last ran (an option tried and reverted) must not look newer than `.done`."""
    done = read_stamp(done_file)
    if done is not None and done["key"] == key:
        done_time = done_file.stat().st_mtime_ns
        os.utime(key_file, ns=(done_time - 1_000_000_000, done_time - 1_000_000_000))


def stage_status(plan: list[StageInputs | NotSetUp], stamps_dir: str | Path) -> list[StageStatus]:
    """Each stage: up to date, stale (with what changed since it last ran), missing (never ran / output gone) or
    not set up (a make variable it needs is unset)."""
    statuses = []
    stale_upstream: list[str] = []
    for stage in plan:
        if isinstance(stage, NotSetUp):
            statuses.append(StageStatus(stage.stage, "not set up", (stage.reason,), ""))
            continue
        done = read_stamp(done_path(stamps_dir, stage.stage))
        adopted = _adoptable(stage, done)
        if not adopted and (done is None or not stage.output.exists()):
            why = "never ran here" if done is None else f"its output {stage.output} is gone"
            statuses.append(StageStatus(stage.stage, "missing", (why,), stage.key))
            stale_upstream.append(stage.stage)
            continue
        if adopted or done["key"] == stage.key:
            reasons = tuple(f"{name} will re-run first" for name in stale_upstream if name in _upstream_names(stage))
            state = "stale" if reasons else "up to date"
            if adopted and not reasons:
                reasons = ("made outside make; its sealed output records this key",)
            statuses.append(StageStatus(stage.stage, state, reasons, stage.key))
        else:
            reasons = tuple(input_changes(done.get("inputs", {}), json.loads(json.dumps(stage.inputs, default=str))))
            statuses.append(StageStatus(stage.stage, "stale", reasons or ("its key changed",), stage.key))
        if statuses[-1].state != "up to date":
            stale_upstream.append(stage.stage)
    return statuses


def input_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two stages' inputs, in words: options by name, upstream stages, data, code."""
    changes = []
    old_config, new_config = before.get("config", {}), now.get("config", {})
    for name in sorted(set(old_config) | set(new_config)):
        if name not in new_config:
            changes.append(f"option {name} is no longer part of the key (was {_short(old_config[name])})")
        elif name not in old_config:
            changes.append(f"option {name} is new in the key ({_short(new_config[name])})")
        elif old_config[name] != new_config[name]:
            changes.append(f"option {name}: {_short(old_config[name])} -> {_short(new_config[name])}")
    old_upstream, new_upstream = before.get("upstream", {}), now.get("upstream", {})
    for name in sorted(set(old_upstream) | set(new_upstream)):
        if old_upstream.get(name) != new_upstream.get(name):
            changes.append(f"upstream {name} changed ({old_upstream.get(name)} -> {new_upstream.get(name)})")
    if before.get("data") != now.get("data"):
        changes.append("dataset contents changed (files added, removed or resized)")
    if before.get("code") != now.get("code"):
        changes.append(f"code version {before.get('code')} -> {now.get('code')}")
    if before.get("out") != now.get("out"):
        changes.append(f"output folder {before.get('out')} -> {now.get('out')}")
    return changes


def _upstream_names(stage: StageInputs) -> set[str]:
    return set(stage.inputs.get("upstream", {}))


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
