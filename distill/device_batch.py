"""A distill batch on the device: RGB clips mirrored and normalised there with the student's own input normalisation.

On CUDA the loaders pin their batches (`pin_memory`), so the copies here run without waiting for the host
and overlap the step before; on the CPU the copies are no-ops and nothing here changes a CPU run.
"""

from __future__ import annotations

from typing import Any

import torch

from distinit.pipeline.clips.normalisation import Normalisation
from distinit.pipeline.clips.views import video_to_device


def input_normalisation(model: torch.nn.Module) -> Normalisation | None:
    """The normalisation the (possibly DDP-wrapped) student's RGB input takes; None for flow or a bare module."""
    return getattr(getattr(model, "module", model), "input_normalisation", None)


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool, normalisation: Normalisation | None):
    """A distill batch's (video, targets) on `device`: uint8 RGB mirrored where "flipped" says and normalised there,
    flow (mirrored on the host) and targets as they are."""
    video = video_to_device(batch["video"], device, normalisation, channels_last=channels_last,
                            flipped=batch.get("flipped"))
    targets = {key: value.to(device, non_blocking=True) for key, value in batch["targets"].items()}
    return video, targets
