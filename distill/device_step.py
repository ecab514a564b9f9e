"""What a training or evaluation step needs from the device, shared by distill and evaluate: mixed precision,
cuDNN's choice of kernels, and batches moved to the device and normalised there.

On CUDA the loaders pin their batches (`pin_memory`), so the copies here run without waiting for the host
and overlap the step before; on the CPU the copies are no-ops and nothing here changes a CPU run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from distinit.distill.augment import Normalisation, video_to_device


def autocast_for(config, device: torch.device):
    """(autocast context, GradScaler or None) for `config.amp`: "auto" is bf16 on CUDA and off on the CPU."""
    amp = config.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" and device.type == "cuda" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def use_fast_kernels(device: torch.device, deterministic: bool) -> None:
    """cuDNN benchmarks its kernels for the clip shape on the first batch and keeps the fastest (the shapes never
    change); off on the CPU and with `deterministic`, whose runs must repeat bit for bit."""
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


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
