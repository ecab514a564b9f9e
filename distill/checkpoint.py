"""Checkpoints: written to a temp file then renamed (timm's CheckpointSaver); last + periodic + best.

A checkpoint holds the unwrapped model state_dict, the student's architecture (so loading needs no
flags), the optimizer, the step and epoch, every RNG state, the config and provenance.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_path
from pipeline.errors import DistinitError

logger = logging.getLogger(__name__)

LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
CHECKPOINT_KEYS = ("model", "architecture", "optimizer", "step", "epoch", "rng", "config", "best_val_loss", "provenance")


def periodic_name(step: int) -> str:
    return f"checkpoint-step{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


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
