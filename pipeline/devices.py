"""Where a stage runs: which torch device (`auto`: CUDA when visible, else CPU; `cpu`, `cuda`, `cuda:N`), and how
many worker processes the machine can take."""

from __future__ import annotations

import logging
import os

import torch

from pipeline.errors import DistinitError

logger = logging.getLogger(__name__)


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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or `taskset` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def capped_workers(requested: int, what: str = "worker processes") -> int:
    """min(requested, available cores): more loader or decode processes than cores only adds switching (and
    torch's "suggested max number of worker" warning). 0 (work in the main process) stays 0."""
    cores = available_cores()
    if requested > cores:
        logger.info("%d %s asked, %d cores available: using %d", requested, what, cores, cores)
        return cores
    return requested
