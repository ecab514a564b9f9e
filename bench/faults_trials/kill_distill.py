"""Trial kind 2: SIGKILL `distinit distill` at a random (seeded) step, run the same command again (it
resumes from checkpoint-last.pt), and demand the final weights of an uninterrupted run, tensor by tensor.

Deterministic CPU training (`--deterministic`, one torch thread), a tiny R(2+1)D on 32 px clips so a
run takes seconds. Checkpoints every 2 steps, so about half the kills fall between checkpoints and the
resumed run replays steps it had already taken. The step is drawn uniformly from the run's steps; the
kill comes a random fraction of a step after the progress bar shows it. Checks after the re-run: exit 0,
every weight equal (torch.equal), the final step, one log.jsonl record per epoch (each line valid
JSON, none repeated), no temp file under --out, no process of the killed run alive.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import time
from pathlib import Path

import torch

from bench.faults_trials.common import (
    KindReport, TrialResult, make_video_folder, run_cli, start_cli, temporary_files, wait_for_group_to_exit,
)

VIDEO_COUNT = 8
EPOCHS = 2
SAVE_EVERY_STEPS = 2
POLL_SECONDS = 0.005
MAX_ATTEMPTS = 3
RUN_TIMEOUT_SECONDS = 300.0
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


def build_targets(work: Path) -> Path:
    """Teacher targets of VIDEO_COUNT tiny videos, by the real CLI."""
    videos = make_video_folder(work / "videos", VIDEO_COUNT)
    out = work / "targets"
    done = run_cli(["extract", "--data", "folder", "--root", str(videos), "--out", str(out), "--shard-count", "2",
                    "--workers", "0", "--max-frames-per-video", "4", "--no-progress"], timeout=RUN_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"extraction for the distill trials failed: {done.stderr[-500:]}")
    return out / "folder"


def distill_arguments(targets: Path, out: Path, workers: int = 0) -> list[str]:
    """6 training videos x 3 clips in batches of 2: 9 steps an epoch. The loader's workers change speed,
    never the samples (distill/data.py), and are not part of the run's key: same run folder, same weights."""
    return [
        "distill", "--targets", str(targets), "--student", "r2plus1d_18", "--width", "tiny", "--frames", "4",
        "--stride", "1", "--short-side", "32", "--crop", "32", "--batch-size", "2", "--epochs", str(EPOCHS),
        "--workers", str(workers), "--device", "cpu", "--deterministic", "--optimizer", "adamw", "--lr", "0.002",
        "--seed", "3", "--set", "warmup_steps=2", "--set", "val_fraction=0.25", "--set", "clips_per_video=3",
        "--set", f"save_every_steps={SAVE_EVERY_STEPS}", "--out", str(out),
    ]


def shown_step(log_path: Path) -> tuple[int, int] | None:
    """(step, total) the progress bar last showed."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    matches = _PROGRESS.findall(text)
    return (int(matches[-1][0]), int(matches[-1][1])) if matches else None


def run_folder(out: Path) -> Path | None:
    folders = [path for path in out.iterdir() if path.is_dir()] if out.is_dir() else []
    return folders[0] if folders else None


def final_weights(out: Path):
    folder = run_folder(out)
    checkpoint = torch.load(folder / "checkpoint-last.pt", map_location="cpu", weights_only=False)
    return checkpoint["model"], checkpoint["step"]


def weight_differences(reference: dict, resumed: dict) -> list[str]:
    if reference.keys() != resumed.keys():
        return [f"state_dict keys differ: {sorted(set(reference) ^ set(resumed))[:5]}"]
    return [name for name in reference if not torch.equal(reference[name], resumed[name])]


def log_problems(out: Path) -> list[str]:
    folder = run_folder(out)
    path = folder / "log.jsonl"
    if not path.is_file():
        return ["no log.jsonl"]
    epochs, steps = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            if record.get("record") == "step":  # the running loss every log_every_steps
                steps.append(record["step"])
            else:
                epochs.append(record["epoch"])
        except (ValueError, KeyError, AttributeError):
            return [f"log.jsonl line {number} is not a JSON record: {line[:80]!r}"]
    if epochs != list(range(1, EPOCHS + 1)):
        return [f"log.jsonl epochs {epochs}, expected {list(range(1, EPOCHS + 1))}"]
    if steps != sorted(set(steps)):
        return [f"log.jsonl step records {steps}: repeated or out of order (a resume logged some twice)"]
    return []


def kill_at_random_step(arguments: list[str], total_steps: int, step_seconds: float, rng: random.Random,
                        log_path: Path) -> dict:
    target_step = rng.randint(1, total_steps - 1)
    extra_delay = rng.uniform(0, step_seconds)
    started = time.monotonic()
    process = start_cli(arguments, log_path=log_path)
    kill_time = None
    while process.poll() is None and time.monotonic() - started < RUN_TIMEOUT_SECONDS:
        shown = shown_step(log_path)
        if kill_time is None and shown is not None and shown[0] >= target_step:
            kill_time = time.monotonic() + extra_delay
        if kill_time is not None and time.monotonic() >= kill_time:
            break
        time.sleep(POLL_SECONDS)
    exited = process.poll() is not None
    if not exited:
        process.send_signal(signal.SIGKILL)
    process.wait()
    shown = shown_step(log_path)
    survivors = wait_for_group_to_exit(process.pid, timeout=10.0)
    return {"target_step": target_step, "shown_step": shown[0] if shown else 0, "exited_before_kill": exited,
            "survivors": survivors}


def one_trial(number: int, arguments: list[str], workers: int, out: Path, reference, total_steps: int,
              step_seconds: float, rng: random.Random, logs: Path) -> TrialResult:
    for _ in range(MAX_ATTEMPTS):
        shutil.rmtree(out, ignore_errors=True)
        facts = kill_at_random_step(arguments, total_steps, step_seconds, rng, logs / f"kill-{number:02d}.log")
        if not facts["exited_before_kill"]:
            break
        # On a loaded machine the last steps can finish before the progress bar shows them: draw again.
    folder = run_folder(out)
    facts["resume_from_step"] = _saved_step(folder) if folder else None
    problems = [f"processes outlived the killed run: {facts['survivors']}"] if facts["survivors"] else []
    if facts["exited_before_kill"]:
        problems.append(f"the run finished before the kill {MAX_ATTEMPTS} times; nothing was tested")
    problems += resume_problems(arguments, out, reference)
    facts["workers"] = workers
    name = (f"kill {number:02d} (step {facts['shown_step']}/{total_steps}, resumed from step "
            f"{facts['resume_from_step']}, {workers} loader workers)")
    return TrialResult(name, not problems, "; ".join(problems), facts)


def resume_problems(arguments: list[str], out: Path, reference) -> list[str]:
    """Run the command again to the end; what differs from the uninterrupted run (nothing, ideally)."""
    problems = []
    rerun = run_cli([*arguments, "--no-progress"], timeout=RUN_TIMEOUT_SECONDS)
    if rerun.returncode != 0:
        problems.append(f"resumed run exited {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}")
    else:
        weights, step = final_weights(out)
        different = weight_differences(reference[0], weights)
        if different:
            problems.append(f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}")
        if step != reference[1]:
            problems.append(f"final step {step}, uninterrupted run {reference[1]}")
        problems += log_problems(out)
    leftovers = temporary_files(out)
    if leftovers:
        problems.append(f"temp files left: {[str(path.relative_to(out)) for path in leftovers]}")
    return problems


def after_log_record_trial(arguments: list[str], out: Path, reference, logs: Path) -> TrialResult:
    """A kill in the few milliseconds between an epoch's log record and its checkpoint (random kills
    rarely land there): SIGKILL as soon as log.jsonl has a record, plant the temp file a kill inside
    torch.save leaves, resume."""
    shutil.rmtree(out, ignore_errors=True)
    process = start_cli(arguments, log_path=logs / "kill-after-log.log")
    while process.poll() is None:
        folder = run_folder(out)
        if folder is not None and (folder / "log.jsonl").is_file() and (folder / "log.jsonl").stat().st_size:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(POLL_SECONDS / 10)
    process.wait()
    survivors = wait_for_group_to_exit(process.pid, timeout=10.0)
    folder = run_folder(out)
    facts = {"shown_step": shown_step(logs / "kill-after-log.log"), "resume_from_step": _saved_step(folder),
             "survivors": survivors}
    (folder / ".checkpoint-last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    problems = [f"processes outlived the killed run: {survivors}"] if survivors else []
    problems += resume_problems(arguments, out, reference)
    return TrialResult(f"kill just after epoch 1's log record (resumed from step {facts['resume_from_step']}) "
                       "+ a planted checkpoint temp file", not problems, "; ".join(problems), facts)


def _saved_step(folder: Path) -> int | None:
    """The step checkpoint-last.pt holds (what the re-run resumes from); None if there is none yet."""
    path = folder / "checkpoint-last.pt"
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    except Exception:  # a damaged checkpoint is for the resumed run to reject; here it is only a fact
        return None


def run_reference(arguments: list[str], out: Path, log_path: Path) -> tuple[tuple, int, float]:
    """The uninterrupted run: ((final weights, final step), total steps, seconds per training step)."""
    shutil.rmtree(out, ignore_errors=True)
    process = start_cli(arguments, log_path=log_path)
    anchor = None
    while process.poll() is None:
        if anchor is None and run_folder(out) is not None:  # created just before the first step
            anchor = time.monotonic()
        time.sleep(POLL_SECONDS)
    if process.returncode != 0 or shown_step(log_path) is None:
        raise RuntimeError(f"reference distillation failed (exit {process.returncode}); see {log_path}")
    total_steps = shown_step(log_path)[1]
    step_seconds = (time.monotonic() - (anchor or time.monotonic())) / max(total_steps, 1)
    return final_weights(out), total_steps, step_seconds


def run(work: Path, trials: int = 5, seed: int = 0, workers_choices: tuple[int, ...] = (0,)) -> KindReport:
    """`trials` kill-and-resume trials (trial i with workers_choices[i % len] loader workers), then the
    kill just after a log record; all compared with one uninterrupted run without workers."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    targets = build_targets(work)
    out = work / "runs"
    reference, total_steps, step_seconds = run_reference(distill_arguments(targets, out), out, logs / "reference.log")
    rng = random.Random(seed)
    results = []
    for number in range(trials):
        workers = workers_choices[number % len(workers_choices)]
        results.append(one_trial(number, distill_arguments(targets, out, workers), workers, out, reference,
                                 total_steps, step_seconds, rng, logs))
    # The bar lags the training by up to a step or two, so "shown" is a lower bound on the killed step.
    notes = (f"{total_steps} steps, checkpoint every {SAVE_EVERY_STEPS}; killed when the progress bar showed steps "
             f"{[result.facts['shown_step'] for result in results]}, resumed from checkpoint steps "
             f"{[result.facts['resume_from_step'] for result in results]}; loader workers "
             f"{[result.facts['workers'] for result in results]}")
    results.append(after_log_record_trial(distill_arguments(targets, out), out, reference, logs))
    return KindReport("kill during distill", results, notes, time.monotonic() - started)
