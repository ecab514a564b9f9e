"""torchrun integration: one process per device, gloo on CPU, nccl on GPU. Nothing home-made."""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from distinit.pipeline.config import seconds_from_environment
from distinit.pipeline.devices import resolve_device

# How long a collective waits for the slowest rank before the run fails. Start-up is the longest wait: every rank
# lists and checks the targets and builds its dataset before the first collective, and at Kinetics size that is
# minutes on a shared file system, beyond torch's default (10 min for NCCL). DISTINIT_PROCESS_GROUP_TIMEOUT (seconds)
# sets another.
DEFAULT_PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


def process_group_timeout() -> datetime.timedelta:
    seconds = seconds_from_environment("DISTINIT_PROCESS_GROUP_TIMEOUT", DEFAULT_PROCESS_GROUP_TIMEOUT.total_seconds())
    return datetime.timedelta(seconds=seconds)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # A gloo group for host-side flags (the preemption vote each step), so reading one never waits for the GPU;
    # None: the default group (gloo already, on CPU) or one process.
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process when absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo", timeout=process_group_timeout())
    control = None
    if world_size > 1 and resolved.type == "cuda":
        control = dist.new_group(backend="gloo", timeout=process_group_timeout())
    return DistributedContext(rank, world_size, local_rank, resolved, control)


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """Whether `flag` is true on any rank (a collective on host memory: every rank calls it at the same point)."""
    if not context.enabled:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=context.control_group)
    return bool(value.item())


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def sum_over_ranks(context: DistributedContext) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function summing a tensor over ranks (for the loss's global person count); None in one process."""
    if not context.enabled:
        return None
    return lambda values: all_reduce_sum(values, context)


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's `value`, as a list indexed by rank (picklable objects; a collective: call on every rank)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
