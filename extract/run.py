"""The stage-one runner: videos -> sampled frames -> frozen teachers -> sharded HDF5 targets.

Reading top to bottom: `prepare` lists the videos, builds the teachers and names the output folder by
its stage key; `run_extraction` writes this process's shards (one writer per shard, decoding in worker
processes ahead of batched teacher inference); `finalize` seals the folder with `manifest.json` once
every shard exists. A finished shard whose bytes match its recorded sha256 and that verifies is skipped
on a re-run; a half-written, damaged or unrecorded one is redone from scratch, so an interrupted run
resumes with byte-identical output.

Several hosts may run parts at once: a shard has one writer at a time (its lease, pipeline.shards.lease), a
shard another live writer holds is left to it, and `finalize` refuses while any shard is still being written.
A scheduler's SIGTERM/SIGUSR1 (pipeline.preemption) stops the run after the current video: the shard being
written is abandoned, finished ones are kept, the SLURM job is requeued, and the re-run writes only the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distinit.extract.config import CODE_VERSION, ExtractConfig
from distinit.extract.pool import DecodePool
from distinit.extract.sampling import SamplingConfig
from distinit.extract.teachers import create_teacher
from distinit.extract.teachers.registry import check_teacher_kinds
from distinit.extract.teaching import teach
from distinit.pipeline.atomic import make_output_folder, remove_leftover_temporary_files, replace_shared_text
from distinit.pipeline.config import config_to_dict
from distinit.pipeline.devices import capped_workers, resolve_device
from distinit.pipeline.datasets import manifest_hash, write_manifest as write_video_manifest
from distinit.pipeline.datasets.records import relative_path
from distinit.pipeline.datasets.selection import selected_listing
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.preemption import Preempted, PreemptionWatch, preempted_message, requeue_job
from distinit.pipeline.provenance import write_provenance
from distinit.pipeline.stages.graph import demo_data_key_of, extract_stage_inputs
from distinit.pipeline.stages.stamps import write_stage_record
from distinit.pipeline.shards import (
    MANIFEST_NAME, ShardBusy, ShardWriter, compute_stage_key, output_key, parse_shard_name, partition_videos,
    read_manifest, shard_files, shard_name, verify_shard, write_manifest,
)
from distinit.pipeline.shards.checksum import checksum_path, checksum_problem, recorded_checksum
from distinit.pipeline.shards.header import file_attributes, open_read_only
from distinit.pipeline.shards.lease import lease_seconds, live_holder, live_leases, remove_stale_leases

logger = logging.getLogger(__name__)
VIDEOS_MANIFEST = "videos.jsonl"
# Where the output went is not what it holds (provenance.json keeps the whole config).
MANIFEST_LEAVES_OUT = ("out",)


class ExtractionError(DistinitError):
    """Too many videos failed; what succeeded is written."""


class ShardAbandoned(Exception):
    """A preemption signal arrived while the shard was being written; its writer dropped the temp file."""


@dataclasses.dataclass
class ExtractionPlan:
    config: ExtractConfig
    targets_dir: Path
    stage_key: str
    teachers: list[Any]
    sampling: SamplingConfig
    decode_short_side: int
    batch_size: int
    video_paths: dict[str, str]
    shards: list[list[str]]  # video ids of shard i, in id order


@dataclasses.dataclass
class ExtractionReport:
    targets_dir: Path
    stage_key: str
    shards_written: list[int]
    shards_skipped: list[int]
    videos: int
    rows: int
    failures: list[dict[str, str]]
    seconds: float
    manifest: Path | None
    shards_busy: dict[int, str] = dataclasses.field(default_factory=dict)  # index -> the live writer holding it


@dataclasses.dataclass
class PartProgress:
    """What `write_part` did: shards written, left to other writers, or the one abandoned at a preemption."""

    written: list[int] = dataclasses.field(default_factory=list)
    busy: dict[int, str] = dataclasses.field(default_factory=dict)
    rows: int = 0
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    stopped: bool = False
    abandoned: int | None = None


def prepare(config: ExtractConfig) -> ExtractionPlan:
    instances = config.teacher_instances
    check_teacher_kinds(instance.kind for instance in instances)  # before listing what may be a large dataset
    listing = selected_listing(config)
    if not listing.records:
        raise DistinitError(f"{config.root}: dataset {config.data} has no videos to extract")
    device = resolve_device(config.device)
    teachers = [
        create_teacher(instance.kind, name=instance.name, device=device,
                       **dict(config.teacher_options.get(instance.name, {})))
        for instance in instances
    ]
    batch_size = config.batch_size or (64 if device.type == "cuda" else 8)
    for teacher in teachers:
        teacher.batch_size = min(teacher.batch_size, batch_size)
    sampling = SamplingConfig(config.frames_per_second, config.max_frames_per_video)
    stage_key = compute_stage_key(
        manifest_hash(listing), [teacher.describe() for teacher in teachers], dataclasses.asdict(sampling), CODE_VERSION
    )
    targets_dir = Path(config.out) / config.data / stage_key
    make_output_folder(targets_dir)
    check_shard_count(targets_dir, config.shard_count)
    write_video_manifest(listing, targets_dir / VIDEOS_MANIFEST)
    video_paths = {record.id: str(record.path) for record in listing.records}
    return ExtractionPlan(
        config=config,
        targets_dir=targets_dir,
        stage_key=stage_key,
        teachers=teachers,
        sampling=sampling,
        decode_short_side=max(teacher.decode_short_side for teacher in teachers),
        batch_size=batch_size,
        video_paths=video_paths,
        shards=partition_videos(sorted(video_paths), config.shard_count),
    )


def check_shard_count(targets_dir: Path, shard_count: int) -> None:
    """Shards of another --shard-count in the same folder would mix two partitions of the videos."""
    counts = {parse_shard_name(path.name)[1] for path in targets_dir.glob("shard-*.h5") if parse_shard_name(path.name)}
    other = sorted(counts - {shard_count})
    if other:
        raise DistinitError(
            f"{targets_dir}: holds shards of --shard-count {other[0]}, not {shard_count}; rerun with "
            f"--shard-count {other[0]} or delete that folder to re-extract"
        )


def shard_is_done(plan: ExtractionPlan, index: int) -> bool:
    """A finished shard is kept when its bytes match the sha256 recorded for it, checked before HDF5 opens it
    (a damaged attribute heap can hang the reader), and it then verifies; anything else is redone."""
    path = plan.targets_dir / shard_name(index, plan.config.shard_count)
    if not path.exists():
        return False
    problem = checksum_problem(path, expected_sha256(plan.targets_dir, path))
    if problem is None:
        keys = [output_key(teacher.name, spec.name) for teacher in plan.teachers for spec in teacher.outputs]
        problem = next(iter(verify_shard(path, stage_key=plan.stage_key, output_keys=keys)), None)
    holder = live_holder(path) if problem is not None else None
    if holder is not None:  # being rewritten: its writer replaces it, and this run leaves it alone
        logger.warning("%s: %s; %s is rewriting it", path.name, problem, holder)
        return False
    if problem is not None:
        logger.warning("redoing %s: %s", path.name, problem)
        path.unlink()
        checksum_path(path).unlink(missing_ok=True)
        return False
    return True


def expected_sha256(targets_dir: Path, path: Path) -> str | None:
    """The sha256 recorded beside the shard, else (a folder sealed by an older distinit, which wrote no
    `.sha256` files) the one its manifest lists."""
    recorded = recorded_checksum(path)
    if recorded is not None or not (targets_dir / MANIFEST_NAME).is_file():
        return recorded
    try:
        entries = read_manifest(targets_dir)["shards"]
    except (DistinitError, KeyError, TypeError):
        return None
    return next((entry.get("sha256") for entry in entries if isinstance(entry, dict) and entry.get("file") == path.name), None)


def write_shard(
    plan: ExtractionPlan, index: int, pool: DecodePool, videos_bar: tqdm, frames_bar: tqdm, watch: PreemptionWatch,
) -> tuple[int, list[dict[str, str]]]:
    """Write shard `index` from scratch; returns (rows, failed videos). The bars count videos and frames (tqdm shows
    the rates). Raises ShardBusy when another live writer holds the shard (the ShardWriter's lease; it also removes
    temp files of the shard's dead writers), ShardAbandoned after a preemption signal (the temp file dropped)."""
    final_path = plan.targets_dir / shard_name(index, plan.config.shard_count)
    attributes = {
        "dataset": plan.config.data,
        "stage_key": plan.stage_key,
        "code_version": CODE_VERSION,
        "sampling": dataclasses.asdict(plan.sampling),
    }
    failures: list[dict[str, str]] = []
    pending = []
    video_ids = plan.shards[index]
    with ShardWriter(
        final_path, teachers=[teacher.describe() for teacher in plan.teachers],
        shard_index=index, shard_count=plan.config.shard_count, attributes=attributes,
    ) as writer:
        decoded = pool.decode((video_id, plan.video_paths[video_id]) for video_id in video_ids)
        for number, video in enumerate(decoded, start=1):
            if watch.requested:  # before using the video: its decode may have met the same signal (ffmpeg ends on TERM)
                raise ShardAbandoned(index)
            if video.error is not None:
                logger.warning("skipping %s: %s", video.path, video.error)
                failures.append({"video_id": video.video_id, "path": video.path, "reason": video.error})
                # Stored relative to the dataset root, as videos.jsonl is, so the folder says nothing of where it was made.
                writer.add_skipped(video.video_id, relative_path(Path(video.path), Path(plan.config.root)), video.error)
            else:
                writer.add_layout(video.video_id, video.layout)
                pending.append(video)
            # Batch boundaries depend only on the shard's video list, so a redone shard is byte-identical.
            if pending and (sum(len(v.frames) for v in pending) >= plan.batch_size or number == len(video_ids)):
                rows = teach(plan.teachers, pending)
                writer.append(rows)
                frames_bar.update(len(rows["t_seconds"]))
                pending = []
            videos_bar.update(1)
        if watch.requested:
            raise ShardAbandoned(index)
        rows = writer.row_count
    return rows, failures


def run_extraction(config: ExtractConfig, shard_part: tuple[int, int] = (0, 1), show_progress: bool = True) -> ExtractionReport:
    """Write the shards of this part (`--shard i/N`: shards with index % N == i); finalize when i/N is 0/1 and no
    shard was left to another writer. After SIGTERM/SIGUSR1 it stops at the next video and raises `Preempted`."""
    started = time.monotonic()
    with PreemptionWatch() as watch:
        plan = prepare(config)
        part_index, part_count = shard_part
        mine = [index for index in range(config.shard_count) if index % part_count == part_index]
        todo = [index for index in mine if not shard_is_done(plan, index)]
        skipped_shards = [index for index in mine if index not in todo]
        if skipped_shards:
            logger.info("resuming: %d finished shards verified and kept", len(skipped_shards))
        try:
            progress = write_part(plan, todo, watch, show_progress)
        finally:
            for teacher in plan.teachers:
                teacher.close()
        if progress.stopped:
            raise preempted(watch, len(skipped_shards) + len(progress.written), progress.abandoned)
        # A shard left to another writer is not here yet; finalize would refuse while it is written anyway.
        manifest = finalize(config, plan.targets_dir) if part_count == 1 and not progress.busy else None
        report = ExtractionReport(
            plan.targets_dir, plan.stage_key, progress.written, skipped_shards,
            sum(len(plan.shards[index]) for index in progress.written), progress.rows, progress.failures,
            time.monotonic() - started, manifest, progress.busy,
        )
        check_failure_rate(plan, [index for index in mine if index not in progress.busy], config.max_failure_rate)
    return report


def write_part(plan: ExtractionPlan, todo: list[int], watch: PreemptionWatch, show_progress: bool) -> PartProgress:
    """Write the shards `todo` in order, leaving those another writer holds; stop at a preemption signal."""
    progress = PartProgress()
    total_videos = sum(len(plan.shards[index]) for index in todo)
    workers = capped_workers(plan.config.workers, "decode workers")
    with DecodePool(workers, plan.sampling, plan.decode_short_side, plan.config.decode_timeout_seconds) as pool:
        with tqdm(total=total_videos, unit="video", desc="extract", disable=not show_progress) as videos_bar, \
                tqdm(unit="frame", desc="teacher frames", position=1, disable=not show_progress) as frames_bar:
            for index in todo:
                if watch.requested:
                    progress.stopped = True
                    break
                try:
                    rows, failures = write_shard(plan, index, pool, videos_bar, frames_bar, watch)
                except ShardBusy as busy:
                    logger.warning("%s", busy)
                    progress.busy[index] = str(busy.holder)
                    continue
                except (ShardAbandoned, BrokenProcessPool) as stopped:
                    if not watch.requested:
                        raise
                    if isinstance(stopped, BrokenProcessPool):  # extract.pool makes workers ignore the signal
                        logger.warning("a decode worker ended on %s before this process stopped", watch.signal_name)
                    progress.stopped, progress.abandoned = True, index
                    break
                progress.written.append(index)
                progress.rows += rows
                progress.failures += failures
    return progress


def preempted(watch: PreemptionWatch, kept: int, abandoned: int | None) -> Preempted:
    """Requeue the SLURM job (once everything is cleaned up: requeueing a running job ends it) and say what was kept."""
    shards = f"{kept} shard{'' if kept == 1 else 's'} of this part finished and kept"
    lost = f"shard {abandoned} abandoned" if abandoned is not None else "none abandoned"
    return Preempted(preempted_message("extract", watch.signal_name, f"{shards}, {lost}", requeue_job()))


def part_failures(plan: ExtractionPlan, shard_indices: list[int]) -> list[dict[str, str]]:
    failures = []
    for index in shard_indices:
        with open_read_only(plan.targets_dir / shard_name(index, plan.config.shard_count)) as shard:
            failures += list(file_attributes(shard)["skipped"])
    return failures


def check_failure_rate(plan: ExtractionPlan, shard_indices: list[int], max_failure_rate: float) -> None:
    failures = part_failures(plan, shard_indices)
    videos = sum(len(plan.shards[index]) for index in shard_indices)
    if videos and len(failures) / videos > max_failure_rate:
        raise ExtractionError(
            f"{plan.targets_dir}: {len(failures)} of {videos} videos failed to decode "
            f"(more than --max-failure-rate {max_failure_rate:.0%}); the rest is written, the failures are listed "
            f"in the shards/manifest — fix or remove those videos, or raise --max-failure-rate"
        )


def finalize(config: ExtractConfig, targets_dir: Path) -> Path:
    """Write manifest.json once every shard of the run exists (after all `--shard i/N` parts).

    The manifest says nothing of where the folder is (no `out`), so a copy elsewhere verifies, reads and hashes
    the same (distill's run key holds that hash); the videos root is kept as the user gave it (videos.jsonl's
    paths are relative to it), so a relative one is found from wherever distill runs, or passed with --videos.
    Refuses, removing nothing, while any shard is still being written (a live lease)."""
    check_no_live_writers(targets_dir)
    manifest_config = {name: value for name, value in config_to_dict(config).items() if name not in MANIFEST_LEAVES_OUT}
    path = write_manifest(targets_dir, config=manifest_config, shards=shard_files(targets_dir), extra={
        "videos_manifest": VIDEOS_MANIFEST, "videos_root": str(config.root),
    })
    # Every shard exists (write_manifest checked) and no lease was live, so no writer of this folder is still
    # running: temp files and leases here were left by killed runs (SIGKILL cannot clean up after itself).
    remove_stale_leases(targets_dir)
    remove_leftover_temporary_files(targets_dir)
    write_provenance(targets_dir, config, stage="extract", code_version=CODE_VERSION)
    # The stage key make plans for this config: make adopts the folder, however this run was launched.
    write_stage_record(targets_dir, "extract", extract_stage_inputs(
        config, demo_data_key_of(config.root) if config.data == "demo" else None))
    # `latest` is shared by every extraction of this dataset, which may finalize at the same moment.
    replace_shared_text(Path(config.out) / config.data / "latest", targets_dir.name + "\n")
    manifest = read_manifest(targets_dir)
    logger.info("targets sealed: %s (%d rows, %d skipped videos)", targets_dir, manifest["total_rows"], manifest["skipped_count"])
    return path


def check_no_live_writers(targets_dir: Path) -> None:
    """One line naming every shard still being written and its writer, before anything is sealed or removed."""
    seconds = lease_seconds()
    live = live_leases(targets_dir, seconds)
    if live:
        listed = ", ".join(f"{final_path.name} ({holder})" for final_path, holder in live)
        raise DistinitError(
            f"{targets_dir}: shards still being written: {listed}; nothing was removed — run --finalize again once "
            f"those writers finish (a writer that died frees its shard at once on its own host, else after {seconds:g} s)"
        )
