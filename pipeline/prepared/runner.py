"""`distinit prepare`: list the dataset as extract does, re-encode each video once, seal the folder.

Reading top to bottom: `plan_prepare` lists and selects the videos (the same adapters and options as stage
one), keys the output folder and names each video's copy; `run_prepare` keeps the verdicts a re-run can trust
(`finished_row`), encodes the rest of this part's videos (`--shard i/N`: those whose id hashes to i, the hash
stage one's shards use) with one single-threaded ffmpeg per worker, and seals the folder when it is the only
part; `finalize` seals it once every part is done: videos.jsonl, manifest.json, config.yaml, provenance.json,
and `<out>/<data>/latest`. Every file is written atomically and is a function of the source and the options, so
a run killed at any moment and run again ends with the same bytes as one that never stopped.

A killed run's ffmpeg processes finish the video they were on and exit; their temp files are removed when the
video is redone, or at the seal.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from tqdm import tqdm

from distinit.pipeline.atomic import make_output_folder, remove_leftover_temporary_files
from distinit.pipeline.datasets import manifest_hash
from distinit.pipeline.datasets.records import VideoRecord, relative_path
from distinit.pipeline.datasets.selection import selected_listing
from distinit.pipeline.errors import DistinitError, VideoError
from distinit.pipeline.prepared.config import CODE_VERSION, PrepareConfig, prepare_key
from distinit.pipeline.prepared.encoding import Encoding, encode_video, restore_fixed_mtime
from distinit.pipeline.prepared.manifest import VIDEOS_FOLDER, finished_row, read_row, seal, write_latest, write_row
from distinit.pipeline.provenance import write_provenance
from distinit.pipeline.shards.checksum import checksum_problem
from distinit.pipeline.shards.format import shard_of_video
from distinit.pipeline.video.binary import ffmpeg_binary

logger = logging.getLogger(__name__)


class PrepareError(DistinitError):
    """Too many videos failed; what succeeded is written."""


@dataclasses.dataclass(frozen=True)
class PlannedVideo:
    id: str
    source: Path  # as the adapter listed it
    source_relative: str  # relative to the dataset root
    source_size: int | None
    relative: str  # its prepared copy, relative to the videos folder
    target: Path  # its prepared copy


@dataclasses.dataclass
class PreparePlan:
    config: PrepareConfig
    folder: Path  # <out>/<data>/<key>
    key: str
    manifest_hash: str
    videos: list[PlannedVideo]  # in id order


@dataclasses.dataclass
class PrepareReport:
    folder: Path
    key: str
    videos: int  # this part's
    written: int
    kept: int
    skipped: list[dict[str, Any]]  # this part's skipped rows, kept ones included
    seconds: float
    manifest: Path | None


def plan_prepare(config: PrepareConfig) -> PreparePlan:
    listing = selected_listing(config)
    if not listing.records:
        raise DistinitError(f"{config.root}: dataset {config.data} has no videos to prepare")
    listing_hash = manifest_hash(listing)
    key = prepare_key(config, listing_hash)
    folder = Path(config.out) / config.data / key
    videos, owners = [], {}
    for record in sorted(listing.records, key=lambda record: record.id):
        relative = target_relative_path(record, listing.root)
        if relative in owners:
            raise DistinitError(
                f"{record.path}: its prepared copy would be {relative}, as {owners[relative]}'s is; rename one of them"
            )
        owners[relative] = record.path
        source = Path(record.path)
        videos.append(PlannedVideo(
            id=record.id, source=source, source_relative=relative_path(source, listing.root),
            source_size=source.stat().st_size if source.is_file() else None,
            relative=relative, target=folder / VIDEOS_FOLDER / relative,
        ))
    return PreparePlan(config, folder, key, listing_hash, videos)


def target_relative_path(record: VideoRecord, root: Path) -> str:
    """Where a video's copy goes under the videos folder: its path under the dataset root with the extension
    .mp4; a video listed from outside the root goes by its id."""
    relative = PurePosixPath(relative_path(Path(record.path), root))
    if relative.is_absolute() or ".." in relative.parts:
        relative = PurePosixPath(record.id + ".mp4")
        if relative.is_absolute() or ".." in relative.parts:
            raise DistinitError(f"{record.path}: outside the dataset root and its id {record.id!r} is no file name")
    return relative.with_suffix(".mp4").as_posix()


def prepare_video(video: PlannedVideo, encoding: Encoding) -> tuple[dict[str, Any], bool]:
    """(row, kept): the video's row from a finished earlier run when it can be trusted (`finished_row`), else
    from encoding it now from scratch; a video that fails gets a row saying why."""
    row = finished_row(video.target)
    if row is not None:
        if "skipped" not in row:
            restore_fixed_mtime(video.target)
        return row, True
    remove_leftover_temporary_files(video.target.parent, video.target.name)
    row = {"id": video.id, "path": video.relative, "source": video.source_relative, "source_size": video.source_size}
    try:
        prepared = encode_video(video.source, video.target, encoding)
    except VideoError as error:
        logger.warning("skipping %s: %s", video.source, error.reason)
        row["skipped"] = error.reason
    else:
        row.update(sha256=prepared.sha256, bytes=prepared.bytes, seconds=prepared.layout["duration"],
                   frame_count=prepared.source_layout.info.frame_count, layout=prepared.layout)
    write_row(video.target, row)
    return row, False


def in_parallel(function: Callable[[PlannedVideo], Any], videos: list[PlannedVideo], workers: int,
                progress: str | None = None) -> list[Any]:
    """[function(video) for video in videos], `workers` at a time (threads: the work is ffmpeg processes and
    hashing, which release the GIL). An exception stops the run: what is queued is dropped, what runs finishes."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
    try:
        futures = {pool.submit(function, video): position for position, video in enumerate(videos)}
        results: list[Any] = [None] * len(videos)
        with tqdm(total=len(videos), unit="video", desc=progress, disable=progress is None) as bar:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def worker_count(requested: int | None) -> int:
    """`requested` encoders, at most one per core this process may run on (each ffmpeg has one thread)."""
    cores = max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)
    return cores if requested is None else min(requested, cores)


def run_prepare(config: PrepareConfig, part: tuple[int, int] = (0, 1), show_progress: bool = True) -> PrepareReport:
    """Prepare this part's videos (`--shard i/N`); seal the folder when i/N is 0/1."""
    started = time.monotonic()
    plan = plan_prepare(config)
    make_output_folder(plan.folder / VIDEOS_FOLDER)
    part_index, part_count = part
    mine = [video for video in plan.videos if shard_of_video(video.id, part_count) == part_index]
    encoding = Encoding(config.short_side, config.gop, config.crf, config.preset, config.timeout_seconds, config.tune)
    results = in_parallel(lambda video: prepare_video(video, encoding), mine, worker_count(config.workers),
                          "prepare" if show_progress else None)
    kept = sum(was_kept for _, was_kept in results)
    if kept:
        logger.info("resumed: %d finished videos verified and kept", kept)
    manifest = finalize(config, plan) if part_count == 1 else None
    skipped = [row for row, _ in results if "skipped" in row]
    report = PrepareReport(plan.folder, plan.key, len(mine), len(mine) - kept, kept, skipped,
                           time.monotonic() - started, manifest)
    if mine and len(skipped) / len(mine) > config.max_failure_rate:
        raise PrepareError(
            f"{plan.folder}: {len(skipped)} of {len(mine)} videos could not be prepared (more than max_failure_rate "
            f"{config.max_failure_rate:.0%}); the rest is written, the failures are listed in their rows and "
            "manifest.json — fix or remove those videos, or raise max_failure_rate"
        )
    return report


def sealed_row(video: PlannedVideo) -> dict[str, Any] | None:
    """The video's row for the seal (None: not done yet); a copy that differs from its row is an error."""
    row = read_row(video.target)
    if row is not None and "skipped" not in row:
        problem = checksum_problem(video.target, row["sha256"]) if video.target.is_file() else "missing"
        if problem is not None:
            raise DistinitError(
                f"{video.target}: {problem}; run `distinit prepare` again with the same options (it redoes this "
                "video), then --finalize"
            )
    return row


def finalize(config: PrepareConfig, plan: PreparePlan | None = None) -> Path:
    """Seal the folder once every video of every part has its row: videos.jsonl, manifest.json, config.yaml,
    provenance.json and `latest`. A missing row, or a copy that differs from its row, is an error saying what
    to run; returns manifest.json's path."""
    plan = plan or plan_prepare(config)
    rows = in_parallel(sealed_row, plan.videos, worker_count(config.workers))
    missing = [video for video, row in zip(plan.videos, rows) if row is None]
    if missing:
        raise DistinitError(
            f"{plan.folder}: {len(missing)} of {len(plan.videos)} videos are not prepared yet (e.g. "
            f"{missing[0].source}); run every --shard i/N part to the end, then --finalize"
        )
    # Every video has its verdict, so no writer of this folder is still running: temp files were left by kills.
    for folder in sorted({video.target.parent for video in plan.videos} | {plan.folder}):
        remove_leftover_temporary_files(folder)
    write_provenance(plan.folder, config, stage="prepare", code_version=CODE_VERSION, ffmpeg=ffmpeg_version())
    manifest = seal(plan.folder, rows, {
        "stage": "prepare", "key": plan.key, "data": config.data, "code_version": CODE_VERSION,
        "options": config.key_fields(), "dataset_manifest_hash": plan.manifest_hash,
        "selection": {"split": config.split, "split_roles": list(config.split_roles), "limit": config.limit},
        # Sources are named relative to the root as given, so the folder says nothing of where it was made.
        "videos_root": str(config.root),
    })
    write_latest(plan.folder)
    logger.info("prepared videos sealed: %s (%d videos, %d skipped)", plan.folder, len(rows),
                sum("skipped" in row for row in rows))
    return manifest


def ffmpeg_version() -> str:
    """`ffmpeg -version`'s version word (provenance: the encoder's output depends on the build)."""
    try:
        done = subprocess.run([ffmpeg_binary(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = done.stdout.split()
    return words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else "unknown"
