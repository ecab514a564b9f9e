"""Where a stage runs: which torch device (`auto`: CUDA when visible, else CPU; `cpu`, `cuda`, `cuda:N`), and how
many worker processes the machine can take."""

from __future__ import annotations

import logging
import os

import torch

from distinit.pipeline.errors import DistinitError

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


def ranks_on_node() -> int:
    """How many processes of this job share the node: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cores_per_rank() -> int:
    """This process's share of the cores it may run on: under torchrun, 8 ranks on a node share its cores."""
    return max(1, available_cores() // ranks_on_node())


def capped_workers(requested: int | str, what: str = "worker processes") -> int:
    """min(requested, this process's share of the cores): more loader or decode processes than cores only adds
    switching (and torch's "suggested max number of worker" warning), and under torchrun every rank of a node would
    otherwise claim every core. 0 (work in the main process) stays 0. "auto": the share less one core for the
    process itself (at least 1)."""
    share = cores_per_rank()
    if requested == "auto":
        return max(1, share - 1)
    if requested > share:
        logger.info("%d %s asked, %d cores for this process (%d available, %d ranks on the node): using %d",
                    requested, what, share, available_cores(), ranks_on_node(), share)
        return share
    return requested
