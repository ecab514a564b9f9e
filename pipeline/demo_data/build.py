"""Build the demo folder in a hidden staging folder beside it, then swap it into place.

A reader therefore sees the old complete tree, or the new complete tree, never a half-built one.
The `.complete` stamp, written last, holds the hash of the options that change the content and
the size of every file; a re-run with the same options and intact files does nothing.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.config import config_to_dict
from distinit.pipeline.demo_data import layout
from distinit.pipeline.demo_data.config import KNOWN_ACTION_CLASSES, DemoDataConfig
from distinit.pipeline.demo_data.plan import VideoJob, action_jobs, pool_photo_jobs, pool_video_jobs
from distinit.pipeline.demo_data.summary import DemoDataSummary
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_json
from distinit.pipeline.provenance import write_provenance

logger = logging.getLogger(__name__)

# Bump when the generator's output changes for the same options, so old folders get rebuilt.
GENERATOR_VERSION = 1
STAMP_NAME = ".complete"
# Options that do not change a single output byte; changing them must not trigger a rebuild.
_OPTIONS_WITHOUT_EFFECT = ("workers", "ffmpeg_timeout_seconds")


def demo_config_hash(config: DemoDataConfig) -> str:
    options = {key: value for key, value in config_to_dict(config).items() if key not in _OPTIONS_WITHOUT_EFFECT}
    return sha256_json({"generator_version": GENERATOR_VERSION, "options": options})


def build_demo_data(out: str | os.PathLike, config: DemoDataConfig) -> DemoDataSummary:
    """Make (or confirm) the demo pool and labeled action set in `out`; return what is there."""
    out = Path(os.path.abspath(out))  # `--out .` must still have a parent folder to stage in
    started = time.monotonic()
    config_hash = demo_config_hash(config)
    stamp = read_stamp(out)
    if stamp is not None and stamp.get("config_hash") == config_hash and files_intact(out, stamp.get("files", {})):
        logger.info("%s: already built with these options; nothing to do", out)
        return DemoDataSummary.from_record(out, stamp["summary"], up_to_date=True, seconds=time.monotonic() - started)
    check_replaceable(out, has_stamp=stamp is not None)
    staging = _fresh_sibling(out, "building")
    try:
        record = generate(staging, config)
        files = {path: (staging / path).stat().st_size for path in list_files(staging)}
        stamp_record = {"generator_version": GENERATOR_VERSION, "files": files, "summary": record}
        stamp_record["config_hash"] = config_hash
        atomic_write_text(staging / STAMP_NAME, json.dumps(stamp_record, indent=1) + "\n")
        replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return DemoDataSummary.from_record(out, record, up_to_date=False, seconds=time.monotonic() - started)


def generate(folder: Path, config: DemoDataConfig) -> dict[str, Any]:
    """Write every file of the demo set into `folder`; return the numbers the summary reports."""
    video_jobs, photo_jobs = pool_video_jobs(config), pool_photo_jobs(config)
    pool = [*video_jobs, *photo_jobs]
    jobs_by_class = action_jobs(config)
    actions = [job for jobs in jobs_by_class.values() for job in jobs]
    (folder / layout.POOL_FOLDER).mkdir(parents=True)  # present even when empty, for the demo adapter
    run_jobs(folder, [*pool, *actions], config.workers)
    split_counts = write_split_files(folder, config, jobs_by_class)
    write_sources_csv(folder, [*pool, *actions])
    atomic_write_text(folder / "README.txt", layout.readme_text(config, len(pool), len(actions)))
    write_provenance(folder, config, demo_generator_version=GENERATOR_VERSION)
    pool_sizes = sorted({f"{job.width}x{job.height}" for job in pool})
    action_sizes = sorted({f"{job.width}x{job.height}" for job in actions})
    return {
        "pool_clips_from_videos": _count_by_source(video_jobs, config.source_videos),
        "pool_clips_from_photos": len(photo_jobs),
        "pool_seconds": sum(job.frame_count for job in pool) / config.fps,
        "pool_bytes": _folder_bytes(folder / layout.POOL_FOLDER),
        "pool_frame_sizes": ", ".join(pool_sizes),
        "fps": config.fps,
        "gop": config.gop,
        "held_out_photos": list(config.action_photos),
        "action_classes": list(config.action_classes),
        "videos_per_class": config.videos_per_class,
        "action_clip_seconds": config.action_clip_seconds,
        "action_frame_size": ", ".join(action_sizes),
        "action_fps": config.action_fps,
        "action_bytes": _folder_bytes(folder / layout.ACTION_VIDEOS_FOLDER),
        "split_counts": split_counts,
    }


def run_jobs(folder: Path, jobs: list[VideoJob], workers: int) -> None:
    """Make every video. Each encode runs in its own ffmpeg process, so a second thread overlaps
    encoding with rendering (numpy holds the GIL much of the time, so threads gain little more)."""
    for job in jobs:
        (folder / job.relative_path).parent.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(job.make, folder / job.relative_path) for job in jobs]
        try:
            with tqdm(total=len(futures), desc="demo videos", unit="video", disable=None) as progress:
                for future in concurrent.futures.as_completed(futures):
                    future.result()  # re-raises the first failure; the caller removes the staging folder
                    progress.update(1)
        except BaseException:
            for future in futures:
                future.cancel()  # do not make the queued videos of a build that already failed
            raise


def write_split_files(folder: Path, config: DemoDataConfig, jobs_by_class: dict[str, list[VideoJob]]) -> dict[str, int]:
    """Three HMDB-51 split files per class; returns the train/test/unused count per class and split."""
    test_count = config.test_videos_per_class
    for class_name, jobs in jobs_by_class.items():
        names = [Path(job.relative_path).name for job in jobs]
        for split in layout.SPLIT_NUMBERS:
            codes = layout.split_codes(names, test_count, config.unused_per_class, config.seed,
                                       KNOWN_ACTION_CLASSES.index(class_name), split)  # fmt: skip
            atomic_write_text(layout.split_file_path(folder, class_name, split), layout.split_file_text(codes))
    unused = config.unused_per_class
    return {"train": config.videos_per_class - unused - test_count, "test": test_count, "unused": unused}


def write_sources_csv(folder: Path, jobs: list[VideoJob]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "source", "frames", "width", "height", "recipe"])
    for job in sorted(jobs, key=lambda job: job.relative_path):
        writer.writerow([job.relative_path, job.source, job.frame_count, job.width, job.height, job.details])
    atomic_write_text(folder / "sources.csv", buffer.getvalue())


def read_stamp(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def files_intact(out: Path, files: dict[str, int]) -> bool:
    """Every file the stamp lists is there with its recorded size (cheap: a stat per file)."""
    for relative_path, size in files.items():
        try:
            if (out / relative_path).stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(files)


def check_replaceable(out: Path, has_stamp: bool) -> None:
    """Refuse to replace a folder that a demo-data build did not make."""
    if out.exists() and not out.is_dir():
        raise DistinitError(f"{out}: exists and is not a folder; pass a new folder to --out")
    if out.is_dir() and not has_stamp and any(out.iterdir()):
        raise DistinitError(
            f"{out}: folder holds other files (no {STAMP_NAME} stamp); pass a new or empty folder to --out"
        )


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished staging folder onto `out` (renames within one file system)."""
    if not out.exists():
        os.rename(staging, out)
        return
    trash = _fresh_sibling(out, "old")
    os.rename(out, trash / "previous")
    os.rename(staging, out)
    shutil.rmtree(trash, ignore_errors=True)
    logger.info("%s: replaced the previous demo build", out)


def _fresh_sibling(out: Path, purpose: str) -> Path:
    """A new hidden folder beside `out` (same file system, so renames are atomic), made with the
    usual permissions (tempfile.mkdtemp would make it private, and the swapped-in tree with it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / f".{out.name}.{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def list_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _count_by_source(jobs: list[VideoJob], names: tuple[str, ...]) -> dict[str, int]:
    return {name: sum(job.source == name for job in jobs) for name in names}


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
