"""TensorBoard event files beside log.jsonl, so `tensorboard --logdir runs/` shows every run.

log.jsonl stays the record; the event files repeat each epoch's numeric figures, at the epoch's last step, under
tags TensorBoard groups into panels: `train_loss` -> `train/loss`, `val_kd/<key>` -> `val/kd/<key>`, and the
rest under `progress/` (`progress/lr`, `progress/clips_per_second`, ...). The per-step records (every
`log_every_steps`) go in too: `train/loss_running` and `progress/lr` at their step. Only rank 0 writes. `tensorboard` is an
optional extra: without it, training goes on and says once how to get the files.
"""

from __future__ import annotations

import functools
import logging
import numbers
from pathlib import Path
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'distinit[tensorboard]'"
PANELS = ("train", "val")


def tag_for(name: str) -> str:
    """The TensorBoard tag of a log.jsonl field."""
    panel, _, rest = name.partition("_")
    if panel in PANELS and rest:
        return f"{panel}/{rest}"
    return f"progress/{name}"


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """{tag: value} for every numeric field of an epoch record but `step` (the x axis)."""
    return {tag_for(name): float(value) for name, value in record.items()
            if name != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)}


class TensorBoardLog:
    """Appends each epoch's figures to the run folder's event files. `open_writer` makes the SummaryWriter at the
    first epoch logged, so a call that trains nothing (the run was done) adds no file; None: write nothing (turned
    off, not installed, or not the main process). A context manager: leaving it closes the files."""

    def __init__(self, open_writer: Callable[[], Any] | None = None):
        self.open_writer = open_writer
        self.writer = None

    def write_epoch(self, record: Mapping[str, Any]) -> None:
        if self.open_writer is None:
            return
        if self.writer is None:
            self.writer = self.open_writer()
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])
        self.writer.flush()  # an epoch is minutes: show it now, and lose nothing to a kill

    def write_step(self, record: Mapping[str, Any]) -> None:
        """A per-step record (`"record": "step"`): its running loss and lr at its step."""
        self.write_epoch(record)

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard_log(run_dir: Path, resumed_step: int, enabled: bool = True) -> TensorBoardLog:
    """Event files in `run_dir`, or a log that writes nothing when not `enabled` (turned off, or not the main
    process) or `tensorboard` is not installed. Points a killed run logged past `resumed_step` (the checkpoint
    it resumes from) are hidden: the run logs those epochs again, as log.jsonl drops their records
    (checkpoint.trim_epoch_log)."""
    if not enabled:
        return TensorBoardLog()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        logger.info("no TensorBoard event files: tensorboard is not installed (%s to get them)", INSTALL_HINT)
        return TensorBoardLog()
    except Exception as error:  # an install that does not import (e.g. a protobuf it does not support) stops nothing
        logger.warning("no TensorBoard event files: tensorboard does not import (%s: %s)", type(error).__name__, error)
        return TensorBoardLog()
    # purge_step: TensorBoard hides the points of earlier files in this folder from this step on.
    return TensorBoardLog(functools.partial(SummaryWriter, log_dir=str(run_dir), purge_step=resumed_step + 1))
