"""Checkpoints: written to a temp file then renamed (timm's CheckpointSaver); last + periodic + best.

A checkpoint holds the unwrapped model state_dict, the student's architecture (so loading needs no
flags), the optimizer, the step and epoch, every rank's RNG states (a list indexed by rank), the number of
processes that wrote it (`world_size`) and the global batch they made up (`global_batch`: clips per step over all
processes, which fixes the step count and the schedule; a run resumes on any number of processes that makes up
the same one), the config and provenance, and the stems of every video its targets came from
(`pretraining_videos`: {"count", "names", "sha256" (of the names), "content_sha256"}; the provenance keeps the
count and hash only), which evaluation reads to check its test videos were not seen (by name, source group and
content: `content_sha256` is the sorted first CONTENT_HASH_DIGITS hex digits of each video file's sha256, as stage
one stored them; absent in checkpoints written before, or from targets without them), and every rank's running
figures of the epoch under way (`epoch_progress`: a list indexed by rank of {"totals": LossTotals.state_dict(),
"data_wait", "seconds"}, None entries at an epoch's end), so the figures logged for an epoch resumed mid-way cover the whole epoch.

A run killed at any moment resumes from checkpoint-last.pt; `tidy_for_resume` first removes what the
kill left that the checkpoint does not cover (temp files, log records of epochs it will redo).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from distinit.distill.config import DistillConfig
from distinit.pipeline.training.distributed import DistributedContext
from distinit.pipeline.training.seeding import own_rng_state, restore_rng_states
from distinit.pipeline.atomic import atomic_path, atomic_write_text, remove_leftover_temporary_files
from distinit.pipeline.errors import DistinitError, output_error
from distinit.pipeline.init_sources import CHECKPOINT_LAST
from distinit.pipeline.shards import TargetStore, stored_layouts
from distinit.pipeline.video.layout_record import record_sha256

logger = logging.getLogger(__name__)

LAST = CHECKPOINT_LAST  # evaluate finds it through pipeline.init_sources
BEST = "checkpoint-best.pt"
CHECKPOINT_KEYS = ("model", "architecture", "optimizer", "step", "epoch", "rng", "world_size", "global_batch", "config",
                   "best_val_loss", "provenance", "pretraining_videos", "epoch_progress")
# Of each pretraining video's sha256, the first 16 hex digits (64 bits): a chance match between any of ~650k
# Kinetics videos and any of ~13k UCF-101 test videos has a probability under 1e-9, at a quarter of the size.
CONTENT_HASH_DIGITS = 16


class ResumeError(DistinitError):
    """A checkpoint this run cannot resume (written for another global batch, which is part of the run key, so
    this is a checkpoint put into the run folder by hand)."""


def periodic_name(step: int) -> str:
    return f"checkpoint-step{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        try:
            torch.save(state, temporary)
        except RuntimeError as error:  # torch's zip writer reports a failed write (disk full) this way
            raise output_error(path, error) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DistinitError(f"{path}: checkpoint not found; pass an existing checkpoint-*.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise DistinitError(f"{path}: unreadable checkpoint ({type(error).__name__}); use another checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "architecture" not in state:
        raise DistinitError(f"{path}: not a distinit checkpoint (no model/architecture); pass one written by distill")
    return state


def pretraining_content_hashes(store: TargetStore, video_ids) -> list[str] | None:
    """The content hashes of `video_ids` that stage one stored in the target cache's layouts, each cut to its first
    CONTENT_HASH_DIGITS hex digits, sorted and distinct; None when the targets store none (written before
    extract-5). They are the hashes of the files stage one read, the originals, even when distill reads `prepare`'s
    re-encoded copies."""
    index = store.video_index()
    if index is not None:  # packed by stage one: no JSON to parse at every start
        positions = index.rows.positions()
        hashes = {index.content_hash(positions[video_id]) for video_id in video_ids if video_id in positions} - {None}
    else:
        layouts = stored_layouts(store.targets_dir)
        hashes = {record_sha256(layouts.get(video_id)) for video_id in video_ids} - {None}
    return sorted(digest[:CONTENT_HASH_DIGITS] for digest in hashes) if hashes else None


def read_pretraining_videos(path: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint's `pretraining_videos` ({"count", "names", "sha256", and "content_sha256" from distill-3 on};
    in checkpoints written before it had its own key, the provenance's), read without loading its tensors (mmap);
    None when it records no names or cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # torch raises many types for a missing, damaged or pre-zip-format file
        logger.warning("%s: cannot read its pretraining videos (%s)", path, type(error).__name__)
        return None
    if not isinstance(state, dict):
        return None
    provenance = state.get("provenance") if isinstance(state.get("provenance"), dict) else {}
    for videos in (state.get("pretraining_videos"), provenance.get("pretraining_videos")):
        if isinstance(videos, dict) and isinstance(videos.get("names"), (list, tuple)):
            return videos
    return None


def saved_world_size(checkpoint: dict[str, Any]) -> int:
    """How many processes wrote `checkpoint`: its field; before distill-2, the provenance's; else 1."""
    if "world_size" in checkpoint:
        return int(checkpoint["world_size"])
    provenance = checkpoint.get("provenance") or {}
    return int(provenance.get("world_size", 1))


def saved_global_batch(checkpoint: dict[str, Any]) -> int | None:
    """The global batch a checkpoint was trained with: its field (distill-4 on); None before (distill-3 and older
    cut epochs per process, and their run keys differ anyway)."""
    value = checkpoint.get("global_batch")
    return int(value) if value is not None else None


def check_resume_global_batch(path: Path, checkpoint: dict[str, Any], global_batch: int) -> None:
    """Refuse, on every rank alike, to resume with another global batch: the step count, the schedule and the
    position in the epoch would all silently change. The global batch is part of the run key, so this guards
    against a checkpoint copied in by hand."""
    saved = saved_global_batch(checkpoint)
    if saved == global_batch:
        return
    if saved is None:
        raise ResumeError(f"{path} was written by distill before runs were keyed by global batch (code version "
                          f"{checkpoint.get('provenance', {}).get('code_version', 'older')}); it cannot be resumed by "
                          f"this version: remove it, or finish it with the distinit version that wrote it")
    raise ResumeError(
        f"{path} was trained with a global batch of {saved} clips, this run has {global_batch}; run folders are keyed "
        f"by the global batch, so it was put here by hand: remove it, or resume it with global_batch={saved}")


def resume_or_start(run_dir: Path, model, optimizer, context: DistributedContext, global_batch: int) -> dict[str, Any]:
    """Training state: restored from the run folder's last checkpoint when there is one ("resume
    everything"), else fresh. A checkpoint of another global batch is refused; one written by another number of
    processes resumes at the same step (the same global sample position), rank r taking rank r's RNG states
    where it had one. state["epoch_progress"] is this rank's running figures of the epoch under way (None at an
    epoch's end, and from checkpoints written before they were kept)."""
    state: dict[str, Any] = {"step": 0, "epoch": 0, "best_val_loss": math.inf, "stopped": False, "epoch_progress": None}
    last = Path(run_dir) / LAST
    if not last.is_file():
        return state
    checkpoint = load_checkpoint(last)
    check_resume_global_batch(last, checkpoint, global_batch)
    saved_processes = saved_world_size(checkpoint)
    if saved_processes != context.world_size:
        logger.warning("%s: written by %d processes, resumed by %d at step %d (the same global batch of %d clips)",
                       last, saved_processes, context.world_size, checkpoint["step"], global_batch)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    own_state = own_rng_state(checkpoint["rng"], context.rank)
    if own_state is not None:
        restore_rng_states(own_state)
    state["scaler"] = checkpoint.get("scaler")  # fp16's loss scale (distill.train restores it): absent otherwise
    state.update(step=checkpoint["step"], epoch=checkpoint["epoch"], best_val_loss=checkpoint["best_val_loss"],
                 epoch_progress=own_epoch_progress(checkpoint, context.rank, context.world_size))
    logger.info("resumed %s at step %d (epoch %d)", last, state["step"], state["epoch"])
    return state


def own_epoch_progress(checkpoint: dict[str, Any], rank: int, world_size: int | None = None) -> dict[str, Any] | None:
    """This rank's entry of `epoch_progress` (each rank summed its own part of the epoch); None when absent. Resumed
    by another number of processes, rank 0 carries every saved rank's sums and the others start from zero: the
    epoch's figures are sums over ranks, so they come out the same."""
    progress = checkpoint.get("epoch_progress")
    if not isinstance(progress, list):
        return None
    if world_size is None or len(progress) == world_size:
        return progress[rank] if rank < len(progress) else None
    entries = [entry for entry in progress if entry is not None]
    if not entries:
        return None
    merged = {"totals": {"parts": sum(entry["totals"]["parts"] for entry in entries),
                         "clips": sum(int(entry["totals"]["clips"]) for entry in entries)},
              "data_wait": entries[0]["data_wait"], "seconds": entries[0]["seconds"],
              "crop_in_view": [sum(entry.get("crop_in_view", (0.0, 0))[0] for entry in entries),
                               sum(entry.get("crop_in_view", (0.0, 0))[1] for entry in entries)]}
    if rank == 0:
        return merged
    return {"totals": {"parts": merged["totals"]["parts"] * 0, "clips": 0}, "data_wait": 0.0, "seconds": 0.0,
            "crop_in_view": [0.0, 0]}


def checkpoint_state(model, optimizer, state, config: DistillConfig, provenance: dict, rank_rng_states: list[dict],
                     pretraining_videos: dict[str, Any], epoch_progress: list[dict | None]) -> dict[str, Any]:
    """`rank_rng_states`: every rank's RNG states, indexed by rank (`all_gather_objects(rng_states(), ...)`);
    `pretraining_videos`: {"count", "names", "sha256", "content_sha256"} (distill.train.pretraining_videos);
    `epoch_progress`: every rank's running figures of the epoch under way, indexed by rank (entries None at an epoch's end)."""
    world_size = len(rank_rng_states)
    return {
        "model": model.state_dict(),
        "architecture": model.architecture(),
        "optimizer": optimizer.state_dict(),
        "step": state["step"],
        "epoch": state["epoch"],
        "rng": rank_rng_states,
        "world_size": world_size,
        "global_batch": int(config.global_batch_for(world_size)),
        "config": dataclasses.asdict(config),
        "best_val_loss": state["best_val_loss"],
        "provenance": provenance,
        "pretraining_videos": pretraining_videos,
        "epoch_progress": epoch_progress,
    }


class CheckpointSaver:
    """Keeps `checkpoint-last.pt` always, a periodic copy every `save_every_steps`, and the best by validation loss."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST

    def save_last(self, state: dict[str, Any], periodic: bool = False) -> None:
        save_checkpoint(self.last_path, state)
        if periodic:
            with atomic_path(self.run_dir / periodic_name(state["step"])) as temporary:
                shutil.copyfile(self.last_path, temporary)
        logger.info("saved %s (step %d)", self.last_path, state["step"])

    def save_best(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.run_dir / BEST, state)
        logger.info("saved %s (val loss %.4f)", self.run_dir / BEST, state["best_val_loss"])


def append_epoch_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per epoch in the run folder's log.jsonl."""
    try:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as error:
        raise output_error(path, error) from None


def trim_epoch_log(path: Path, completed_epochs: int, completed_step: int | None = None) -> int:
    """Keep the log records of epochs 1..completed_epochs, and the per-step records (`"record": "step"`) up to
    `completed_step`, only; returns how many lines were dropped.

    The epoch's record is appended before its checkpoint is saved, so a run killed in between redoes
    that epoch on resume and would log it twice; a kill inside the append leaves half a line."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            epoch, per_step = record["epoch"], record.get("record") == "step"
        except (ValueError, KeyError, TypeError, AttributeError):
            epoch, per_step = None, False
        if per_step:
            keep = completed_step is not None and isinstance(record.get("step"), int) and record["step"] <= completed_step
        else:
            keep = isinstance(epoch, int) and epoch <= completed_epochs
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        logger.info("%s: dropped %d records of epochs the resumed checkpoint had not finished", path, dropped)
    return dropped


def tidy_for_resume(run_dir: Path, completed_epochs: int, completed_step: int | None = None) -> None:
    """Before a (resumed) run writes anything: remove temp files a killed run left in its folder, and log
    records past the checkpoint. Main process only; one training per run folder at a time."""
    remove_leftover_temporary_files(run_dir)
    trim_epoch_log(run_dir / "log.jsonl", completed_epochs, completed_step)
