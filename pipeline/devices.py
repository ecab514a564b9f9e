"""Which torch device a stage runs on: `auto` (CUDA when visible, else CPU), `cpu`, `cuda`, `cuda:N`."""

from __future__ import annotations

import torch

from pipeline.errors import DistinitError


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when torch sees it; plain `cuda` means this process's GPU (`local_rank` under torchrun)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DistinitError(f"device {device} requested but torch sees no CUDA device; pass --device cpu (or auto)")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved
