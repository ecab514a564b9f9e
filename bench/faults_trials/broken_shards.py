"""Trial kind 4: damage a finished targets folder; `distinit verify` must name the damaged shard (exit 1,
no traceback) and `distinit distill` must refuse to start with one `Error:` line naming it, writing nothing.

Damage: one byte flipped at a seeded random offset of a random shard (half of them in the first 4 KiB:
superblock, object headers; the rest anywhere: B-trees, compressed chunks, attributes), a shard cut in half, a shard deleted, a
manifest whose row count for a shard is off by one (its total kept consistent, so only the shard
disagrees), and a shard swapped for a same-named shard of another extraction. The pristine folder is
built once by the real CLI; every case works on its own copy.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from bench.faults_trials.common import (
    KindReport, TrialResult, error_line, make_video_folder, one_line_error_problem, run_cli, tree_snapshot,
)

SHARD_COUNT = 3
METADATA_BYTES = 4096
COMMAND_TIMEOUT_SECONDS = 120.0


def build_targets(work: Path, name: str, max_frames: int) -> Path:
    videos = work / "videos"
    if not videos.is_dir():
        make_video_folder(videos, 6)
    out = work / name
    done = run_cli(["extract", "--data", "folder", "--root", str(videos), "--out", str(out), "--shard-count",
                    str(SHARD_COUNT), "--workers", "0", "--max-frames-per-video", str(max_frames), "--no-progress"],
                   timeout=COMMAND_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"extraction for the broken-shard trials failed: {done.stderr[-500:]}")
    return next((out / "folder").glob("*/manifest.json")).parent


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}-of-{SHARD_COUNT:05d}.h5"


def flip_byte(rng: random.Random, pristine: Path) -> Callable[[Path], tuple[str, str]]:
    """Damage: one byte inverted, drawn now (so the draws do not depend on when cases run). Half the
    offsets fall in the first 4 KiB, where HDF5 keeps the superblock and the root object headers, so
    the reader's metadata parsing gets hit, not only compressed chunks."""
    index = rng.randrange(SHARD_COUNT)
    size = shard_path(pristine, index).stat().st_size
    offset = rng.randrange(min(METADATA_BYTES, size)) if rng.random() < 0.5 else rng.randrange(size)

    def damage(folder: Path) -> tuple[str, str]:
        path = shard_path(folder, index)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        return path.name, f"byte {offset} of {len(data)}"

    return damage


def truncate(folder: Path) -> tuple[str, str]:
    path = shard_path(folder, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name, f"cut to {len(data) // 2} of {len(data)} bytes"


def delete(folder: Path) -> tuple[str, str]:
    path = shard_path(folder, 2)
    path.unlink()
    return path.name, "deleted"


def manifest_rows_off_by_one(folder: Path) -> tuple[str, str]:
    manifest_file = folder / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    entry = manifest["shards"][0]
    entry["rows"] += 1
    manifest["total_rows"] += 1
    manifest_file.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry["file"], "manifest rows +1 (total kept consistent)"


def swap_from(other: Path) -> Callable[[Path], tuple[str, str]]:
    def damage(folder: Path) -> tuple[str, str]:
        path = shard_path(folder, 0)
        shutil.copyfile(shard_path(other, 0), path)
        return path.name, "replaced by shard 0 of another extraction"

    return damage


def judge(case: str, pristine: Path, work: Path, damage: Callable[[Path], tuple[str, str]]) -> TrialResult:
    folder = work / "cases" / case.replace(" ", "-") / pristine.name
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.copytree(pristine, folder)
    shard, how = damage(folder)
    problems = []
    verified = run_cli(["verify", str(folder)], timeout=COMMAND_TIMEOUT_SECONDS)
    if verified.returncode != 1:
        problems.append(f"verify exited {verified.returncode}, expected 1")
    if "Traceback" in verified.stderr:
        problems.append("verify printed a traceback: " + verified.stderr.strip().splitlines()[-1])
    if shard not in verified.stderr:
        problems.append(f"verify does not name {shard}: {verified.stderr.strip()[:200]!r}")
    runs = folder.parent / "runs"
    distilled = run_cli(["distill", "--targets", str(folder), "--width", "tiny", "--workers", "0", "--device", "cpu",
                         "--out", str(runs), "--no-progress"], timeout=COMMAND_TIMEOUT_SECONDS)
    wrong = one_line_error_problem(distilled)
    if wrong:
        problems.append(f"distill: {wrong}")
    elif shard not in error_line(distilled):
        problems.append(f"distill's error does not name {shard}: {error_line(distilled)!r}")
    if tree_snapshot(runs):
        problems.append(f"distill wrote {sorted(tree_snapshot(runs))[:3]} although it refused")
    facts = {"shard": shard, "damage": how, "verify": verified.stderr.strip().splitlines()[:1],
             "distill": error_line(distilled)}
    return TrialResult(f"{case}: {shard}, {how}", not problems, "; ".join(problems), facts)


def run(work: Path, flips: int = 10, seed: int = 0) -> KindReport:
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    pristine = build_targets(work, "pristine", max_frames=2)
    other = build_targets(work, "other", max_frames=3)
    rng = random.Random(seed)
    cases: list[tuple[str, Callable]] = [(f"flipped byte {number}", flip_byte(rng, pristine)) for number in range(flips)]
    cases += [("truncated shard", truncate), ("missing shard", delete),
              ("manifest disagrees with a shard", manifest_rows_off_by_one),
              ("shard from another extraction", swap_from(other))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # each case has its own copy
        results = list(pool.map(lambda pair: judge(pair[0], pristine, work, pair[1]), cases))
    return KindReport("broken shards", results, f"{flips} random byte flips + 4 fixed cases", time.monotonic() - started)
