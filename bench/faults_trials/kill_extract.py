"""Trial kind 1: SIGKILL `distinit extract` at a random (seeded) moment, run it again, and demand the
output of an uninterrupted run, byte for byte.

Every trial writes to the same `--out` path as the reference run did (after deleting the last trial's
output), so manifest.json, config.yaml, videos.jsonl and `latest` must match byte for byte too; only
provenance.json is left out, since it records the git state at the time it ran (another engineer's
edit flips its dirty flag). Checks after the re-run: exit 0, identical bytes, `distinit verify` clean,
no temp file anywhere under --out, and no process of the killed run still alive.

When the kill lands: start-up (imports, teacher weights) is most of a tiny run, so a kill time drawn
over the whole run would nearly always land before any shard exists. So every `EARLY_EVERY`-th trial
dies at a uniform (seeded) moment of start-up, and the rest at a uniform moment between the targets
folder appearing and (a little past) the reference run's manifest appearing. Where each kill landed
(before any shard, mid-write, between shards, after the manifest, after exit) is read from the folder
at the kill.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import shutil
import signal
import time
from pathlib import Path

from bench.faults_trials.common import (
    KindReport, TrialResult, make_video_folder, run_cli, snapshot_changes, start_cli, temporary_files, tree_snapshot,
    wait_for_group_to_exit,
)

EARLY_EVERY = 5  # trials 0, 5, 10, ... die during start-up
# Writing-phase kills are drawn over the reference's time from the targets folder appearing to the manifest
# appearing, stretched by this much so some land while the run seals and exits.
WRITING_WINDOW_SCALE = 1.15
VIDEO_COUNT = 6
SHARD_COUNT = 3
POLL_SECONDS = 0.002
RUN_TIMEOUT_SECONDS = 300.0


@dataclasses.dataclass
class Reference:
    snapshot: dict[str, str]
    anchor_seconds: float  # start -> the targets folder exists (teachers built, writing begins)
    sealed_seconds: float  # start -> manifest.json exists (what follows is provenance, `latest`, shutdown)


def extract_arguments(videos: Path, out: Path, workers: int) -> list[str]:
    # Batches of 2 frames: more teacher calls, so more moments that fall inside a shard being written.
    return [
        "extract", "--data", "folder", "--root", str(videos), "--out", str(out), "--shard-count", str(SHARD_COUNT),
        "--workers", str(workers), "--max-frames-per-video", "3", "--batch-size", "2", "--no-progress",
    ]


def output_snapshot(out: Path) -> dict[str, str]:
    # provenance.json holds times; verified.json is the record a `distinit verify` (as each trial runs) leaves.
    return tree_snapshot(out, skip=lambda path: path.name in ("provenance.json", "verified.json"))


def targets_folder(out: Path) -> Path | None:
    data_folder = out / "folder"
    if not data_folder.is_dir():
        return None
    folders = [path for path in data_folder.iterdir() if path.is_dir()]
    return folders[0] if folders else None


def run_reference(videos: Path, out: Path, workers: int, log_path: Path) -> Reference:
    """One uninterrupted run, timed (when the targets folder appears, when it exits)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    process = start_cli(extract_arguments(videos, out, workers), log_path=log_path)
    anchor = sealed = None
    while process.poll() is None:
        folder = targets_folder(out)
        if anchor is None and folder is not None:
            anchor = time.monotonic() - started
        if sealed is None and folder is not None and (folder / "manifest.json").exists():
            sealed = time.monotonic() - started
        time.sleep(POLL_SECONDS)
    end = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"reference extraction failed (exit {process.returncode}); see {log_path}")
    anchor = end if anchor is None else anchor
    return Reference(output_snapshot(out), anchor, end if sealed is None else sealed)


def landing(out: Path, exited: bool) -> str:
    """Where the run was when it died, from what it had written."""
    if exited:
        return "after exit"
    folder = targets_folder(out)
    if folder is None:
        return "before any shard"
    names = [path.name for path in folder.iterdir()]
    if "manifest.json" in names:
        return "after manifest"
    if any(name.startswith(".shard-") and name.endswith(".tmp") for name in names):
        return "mid-write"
    if any(name.startswith("shard-") for name in names):
        return "between shards"
    return "before any shard"


def kill_at_random_moment(arguments: list[str], out: Path, reference: Reference, rng: random.Random,
                          log_path: Path, early: bool) -> dict:
    """Start the run, SIGKILL its main process at the drawn moment; returns what happened."""
    writing = (reference.sealed_seconds - reference.anchor_seconds) * WRITING_WINDOW_SCALE
    delay = rng.uniform(0, reference.anchor_seconds) if early else rng.uniform(0, writing)
    started = time.monotonic()
    process = start_cli(arguments, log_path=log_path)
    kill_time = started + delay if early else None
    while process.poll() is None:
        now = time.monotonic()
        if kill_time is None and targets_folder(out) is not None:
            kill_time = now + delay
        if kill_time is not None and now >= kill_time:
            break
        if now - started > RUN_TIMEOUT_SECONDS:
            break
        time.sleep(POLL_SECONDS)
    exited = process.poll() is not None
    if not exited:
        process.send_signal(signal.SIGKILL)
    landed = landing(out, exited)
    process.wait()
    survivors = wait_for_group_to_exit(process.pid, timeout=10.0)
    return {"phase": "start-up" if early else "writing", "delay_seconds": round(delay, 3), "landed": landed,
            "survivors": survivors}


def rerun_problems(arguments: list[str], out: Path, reference: Reference) -> list[str]:
    """Run the command again to the end; what differs from the uninterrupted run (nothing, ideally)."""
    problems = []
    rerun = run_cli(arguments, timeout=RUN_TIMEOUT_SECONDS)
    if rerun.returncode != 0:
        problems.append(f"re-run exited {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}")
    changes = snapshot_changes(reference.snapshot, output_snapshot(out))
    if changes:
        problems.append(f"output differs from the uninterrupted run: {changes[:5]}")
    folder = targets_folder(out)
    verified = run_cli(["verify", str(folder)]) if folder is not None else None
    if verified is None or verified.returncode != 0:
        problems.append(f"verify failed: {verified.stderr.strip()[:300] if verified else 'no targets folder'}")
    leftovers = temporary_files(out)
    if leftovers:
        problems.append(f"temp files left: {[str(path.relative_to(out)) for path in leftovers]}")
    return problems


def one_trial(number: int, videos: Path, out: Path, reference: Reference, workers: int, rng: random.Random,
              logs: Path) -> TrialResult:
    shutil.rmtree(out, ignore_errors=True)
    arguments = extract_arguments(videos, out, workers)
    facts = kill_at_random_moment(arguments, out, reference, rng, logs / f"kill-{number:02d}.log",
                                  early=number % EARLY_EVERY == 0)
    facts["workers"] = workers
    problems = []
    if facts["survivors"]:
        problems.append(f"processes outlived the killed run: {facts['survivors']}")
    problems += rerun_problems(arguments, out, reference)
    name = f"kill {number:02d} ({facts['landed']}, {facts['phase']} +{facts['delay_seconds']:.2f}s, workers {workers})"
    return TrialResult(name, not problems, "; ".join(problems), facts)


def planted_leftovers_trial(videos: Path, out: Path, reference: Reference, workers: int) -> TrialResult:
    """A kill inside one of the small atomic writes (manifest, videos.jsonl, `latest`) lands in a window
    of milliseconds that random kills rarely hit; plant exactly what it leaves, then re-run."""
    arguments = extract_arguments(videos, out, workers)
    if targets_folder(out) is None:
        run_cli(arguments, timeout=RUN_TIMEOUT_SECONDS)
    folder = targets_folder(out)
    planted = [
        folder / ".manifest.json.k1ll3d.tmp", folder / ".videos.jsonl.k1ll3d.tmp",
        folder / ".videos.jsonl.sha256.k1ll3d.tmp", folder / ".provenance.json.k1ll3d.tmp",
        folder / f".shard-00001-of-{SHARD_COUNT:05d}.h5.99999.tmp", out / "folder" / ".latest.k1ll3d.tmp",
    ]
    for path in planted:
        path.write_bytes(b"half-written")
    problems = rerun_problems(arguments, out, reference)
    return TrialResult("temp files of a kill inside an atomic write (planted)", not problems, "; ".join(problems),
                       {"landed": "planted", "phase": "planted", "delay_seconds": 0.0, "workers": workers})


def run(work: Path, trials: int = 20, seed: int = 0, workers_choices: tuple[int, ...] = (0,)) -> KindReport:
    """`trials` kill-and-rerun trials; trial i runs with workers_choices[i % len]."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    videos = make_video_folder(work / "videos", VIDEO_COUNT)
    out = work / "out"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    references = {
        workers: run_reference(videos, out, workers, logs / f"reference-workers{workers}.log") for workers in workers_choices
    }
    rng = random.Random(seed)
    results = []
    for number in range(trials):
        workers = workers_choices[number % len(workers_choices)]
        results.append(one_trial(number, videos, out, references[workers], workers, rng, logs))
    results.append(planted_leftovers_trial(videos, out, references[workers_choices[-1]], workers_choices[-1]))
    landed = collections.Counter(result.facts["landed"] for result in results)
    notes = "kills landed: " + ", ".join(f"{count} {where}" for where, count in sorted(landed.items()))
    return KindReport("kill during extract", results, notes, time.monotonic() - started)
