"""Trial kind 3: a `folder` dataset mixing good clips with every kind of bad file; extraction must finish,
list every bad file in the manifest with a reason that names what is wrong, and extract every good one.

Good on purpose: a 1-frame video (a valid video: its one frame is extracted), an 8000x8000 one (decoded
straight to the teacher's size inside ffmpeg), and a real MP4 named .mkv (ffmpeg reads the content, not
the extension). Bad: zero bytes, cut in half (index at the end, and index first), text named .mp4,
audio only, a 3:500 strip whose frames would be 128000 pixels wide at the teacher's short side,
mode 000, a named pipe nobody writes, and a file whose decode hangs (an ffconcat list, named .mp4, that
points ffmpeg at a named pipe: a real stuck read, ended by the decode timeout, 8 s here).

Mode 000 only binds a root process that lacks CAP_DAC_OVERRIDE; as root the CLI runs with it dropped,
and where it cannot be dropped that file counts as good (root reads it) and the note says so. Each file
is one trial: it passes when it ends up where it belongs (rows, or the manifest with the right reason).
One more trial covers the run as a whole: exit 0 in bounded time, verify clean, no process left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.faults_trials.common import (
    KindReport, TrialResult, distinit_command, ffmpeg, make_video, permission_preexec, subprocess_environment,
    temporary_files, wait_for_group_to_exit,
)
from distinit.pipeline.shards import TargetStore, read_manifest, verify

# Long enough for the 8000x8000 clip on a loaded machine (0.6 s idle), short enough to keep the trial quick.
DECODE_TIMEOUT_SECONDS = 8.0
RUN_TIMEOUT_SECONDS = 240.0

# id -> words one of which the manifest's reason must contain (lower case).
BAD_REASONS = {
    "zero_bytes": ("empty",),
    "truncated_index_last": ("moov", "truncated", "invalid data"),
    "truncated_index_first": ("truncated", "partial"),
    "text_named_mp4": ("invalid data", "no video", "not a video"),
    "audio_only": ("no video stream",),
    "extreme_aspect": ("aspect",),
    "named_pipe": ("named pipe",),
    "decode_hangs": ("timed out",),
}
UNREADABLE = ("unreadable", ("permission",))
GOOD = ("good_a", "good_b", "one_frame", "huge_8000x8000", "mp4_named_mkv")


def _run_ffmpeg(*arguments: str) -> None:
    subprocess.run([ffmpeg(), "-v", "error", "-y", *arguments], check=True, capture_output=True, timeout=120)


def build_folder(root: Path) -> Path:
    """The mixed folder; returns it. Deterministic for the same ffmpeg."""
    root.mkdir(parents=True, exist_ok=True)
    make_video(root / "good_a.mp4", pattern="testsrc", seconds=1.5)
    make_video(root / "good_b.mp4", pattern="smptebars", seconds=1.0, hue=40)
    make_video(root / "one_frame.mp4", pattern="testsrc2", extra=("-frames:v", "1"))
    _run_ffmpeg("-f", "lavfi", "-i", "color=c=teal:size=8000x8000:rate=2", "-frames:v", "2", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", "-threads", "1", str(root / "huge_8000x8000.mp4"))
    make_video(root / "source_for_mkv.mp4", pattern="rgbtestsrc", seconds=1.0)
    (root / "source_for_mkv.mp4").rename(root / "mp4_named_mkv.mkv")
    (root / "zero_bytes.mp4").write_bytes(b"")
    whole = make_video(root / "whole.mp4", pattern="testsrc", seconds=3.0).read_bytes()
    (root / "truncated_index_last.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "whole.mp4").unlink()
    make_video(root / "whole.mp4", pattern="testsrc", seconds=3.0, extra=("-movflags", "+faststart"))
    whole = (root / "whole.mp4").read_bytes()
    (root / "truncated_index_first.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "whole.mp4").unlink()
    (root / "text_named_mp4.mp4").write_text("these are notes, not a video\n" * 20)
    _run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(root / "audio_only.mp4"))
    _run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=8000x48:rate=10", "-t", "0.5", "-c:v", "libx264", "-pix_fmt",
                "yuv420p", "-threads", "1", str(root / "extreme_aspect.mp4"))
    make_video(root / "unreadable.mp4", pattern="testsrc", seconds=1.0, hue=90)
    (root / "unreadable.mp4").chmod(0o000)
    os.mkfifo(root / "named_pipe.mp4")
    # The pipe has no video extension, so the folder scan never lists it; only the ffconcat file reads it.
    os.mkfifo(root / "stuck.pipe")
    (root / "decode_hangs.mp4").write_text("ffconcat version 1.0\nfile stuck.pipe\n")
    return root


def expected_outcomes(permissions_bind: bool) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    good, bad = list(GOOD), dict(BAD_REASONS)
    if permissions_bind:
        bad[UNREADABLE[0]] = UNREADABLE[1]
    else:
        good.append(UNREADABLE[0])
    return tuple(good), bad


def run_extraction(folder: Path, out: Path, logs: Path, preexec) -> dict:
    """Run the CLI on the folder (2 decode workers, so a hang sits in a worker); what happened."""
    config = out.parent / "extract.yaml"
    config.write_text(f"decode_timeout_seconds: {DECODE_TIMEOUT_SECONDS}\n")
    arguments = ["extract", "--config", str(config), "--data", "folder", "--root", str(folder), "--out", str(out),
                 "--shard-count", "2", "--workers", "2", "--max-frames-per-video", "2", "--max-failure-rate", "1",
                 "--no-progress"]
    started = time.monotonic()
    with open(logs / "corrupt-extract.log", "wb") as log:
        process = subprocess.Popen(distinit_command(*arguments), stdout=log, stderr=subprocess.STDOUT,
                                   env=subprocess_environment(), start_new_session=True, preexec_fn=preexec)
    try:
        returncode = process.wait(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        returncode = process.wait()
    survivors = wait_for_group_to_exit(process.pid, timeout=10.0)
    return {"returncode": returncode, "seconds": time.monotonic() - started, "survivors": survivors,
            "log": (logs / "corrupt-extract.log").read_text(errors="replace")}


def file_trials(targets_dir: Path | None, good: tuple[str, ...], bad: dict[str, tuple[str, ...]]) -> list[TrialResult]:
    if targets_dir is None:
        return [TrialResult(name, False, "no targets were written") for name in [*good, *bad]]
    manifest = read_manifest(targets_dir)
    skipped = {entry["video_id"]: entry["reason"] for entry in manifest["skipped"]}
    store = TargetStore(targets_dir)
    rows_by_video = {video_id: len(store.rows_for_video(video_id)["t_seconds"]) for video_id in store.video_ids()}
    results = []
    for video_id in good:
        rows = rows_by_video.get(video_id, 0)
        detail = f"skipped: {skipped[video_id]}" if video_id in skipped else ("" if rows else "no rows")
        results.append(TrialResult(f"good {video_id}", rows > 0 and video_id not in skipped, detail,
                                   {"rows": rows}))
    for video_id, words in bad.items():
        reason = skipped.get(video_id)
        if reason is None:
            detail = f"not listed as skipped ({rows_by_video.get(video_id, 0)} rows)"
        elif not any(word in reason.lower() for word in words):
            detail = f"reason {reason!r} names none of {words}"
        else:
            detail = ""
        results.append(TrialResult(f"bad {video_id}", not detail, detail, {"reason": reason}))
    unexpected = sorted(set(skipped) - set(bad))
    if unexpected:
        results.append(TrialResult("nothing else skipped", False, f"also skipped: {unexpected}"))
    return results


def run(work: Path) -> KindReport:
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    folder = build_folder(work / "mixed")
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    preexec, permissions_bind, permission_note = permission_preexec()
    good, bad = expected_outcomes(permissions_bind)
    outcome = run_extraction(folder, out, logs, preexec)
    candidates = sorted((out / "folder").glob("*/manifest.json")) if (out / "folder").is_dir() else []
    targets_dir = candidates[0].parent if candidates else None
    problems = []
    if outcome["returncode"] != 0:
        problems.append(f"exit {outcome['returncode']}: {outcome['log'].strip().splitlines()[-1:]}")
    if outcome["survivors"]:
        problems.append(f"processes left running: {outcome['survivors']}")
    if targets_dir is not None and verify(targets_dir):
        problems.append(f"verify: {verify(targets_dir)[:2]}")
    if temporary_files(out):
        problems.append(f"temp files left: {temporary_files(out)}")
    whole = TrialResult(f"the run: exit 0 in {outcome['seconds']:.0f} s, verify clean, nothing left running",
                        not problems, "; ".join(problems), {"seconds": outcome["seconds"]})
    results = [whole, *file_trials(targets_dir, good, bad)]
    (folder / "unreadable.mp4").chmod(0o644)  # so the work folder can be deleted by anyone
    notes = f"{len(good)} good, {len(bad)} bad files; {permission_note}"
    return KindReport("corrupt inputs", results, notes, time.monotonic() - started)
