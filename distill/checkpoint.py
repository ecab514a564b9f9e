"""Checkpoints: written to a temp file then renamed (timm's CheckpointSaver); last + periodic + best.

A checkpoint holds the unwrapped model state_dict, the student's architecture (so loading needs no
flags), the optimizer, the step and epoch, every RNG state, the config and provenance.

A run killed at any moment resumes from checkpoint-last.pt; `tidy_for_resume` first removes what the
kill left that the checkpoint does not cover (temp files, log records of epochs it will redo).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_path, atomic_write_text, remove_leftover_temporary_files
from pipeline.errors import DistinitError, output_error

logger = logging.getLogger(__name__)

LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
CHECKPOINT_KEYS = ("model", "architecture", "optimizer", "step", "epoch", "rng", "config", "best_val_loss", "provenance")


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


def trim_epoch_log(path: Path, completed_epochs: int) -> int:
    """Keep the log records of epochs 1..completed_epochs only; returns how many lines were dropped.

    The epoch's record is appended before its checkpoint is saved, so a run killed in between redoes
    that epoch on resume and would log it twice; a kill inside the append leaves half a line."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            epoch = None
        if isinstance(epoch, int) and epoch <= completed_epochs:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        logger.info("%s: dropped %d records of epochs the resumed checkpoint had not finished", path, dropped)
    return dropped


def tidy_for_resume(run_dir: Path, completed_epochs: int) -> None:
    """Before a (resumed) run writes anything: remove temp files a killed run left in its folder, and log
    records past the checkpoint. Main process only; one training per run folder at a time."""
    remove_leftover_temporary_files(run_dir)
    trim_epoch_log(run_dir / "log.jsonl", completed_epochs)
