"""What a training or evaluation step needs from the device, shared by distill and evaluate: mixed precision and
cuDNN's choice of kernels. Batches reach the device through pipeline.clips.views.video_to_device."""

from __future__ import annotations

import contextlib

import torch


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
