"""What the training loop keeps of its losses, without a host sync each step.

- `EpochTotals`: per-term sums on the device, made global (summed over ranks) once, at the end of the epoch.
- `NonFiniteWatch`: the first step whose loss was non-finite, on the device; every NONFINITE_CHECK_EVERY
  steps, before each checkpoint and at the end of the epoch all ranks compare notes (one all-reduce, MIN)
  and, if any rank saw one, every rank raises the same TrainingError together. Raising on the one rank
  alone would leave the others waiting in DDP's next all-reduce until the backend timed out.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from distill.distributed import DistributedContext, all_reduce_min, all_reduce_sum
from pipeline.errors import DistinitError

# Steps between non-finite checks: each one waits for the device, so not every step.
NONFINITE_CHECK_EVERY = 20


class TrainingError(DistinitError):
    """Training cannot go on (a non-finite loss)."""


class EpochTotals:
    """Clip-weighted sums of the loss terms `names` over one epoch, on `device`."""

    def __init__(self, names: Sequence[str], device: torch.device):
        self.names = list(names)
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.clips = 0

    def add(self, terms: Mapping[str, torch.Tensor], clips: int) -> None:
        values = torch.stack([terms[name].detach().to(torch.float64) for name in self.names])  # (terms,)
        self.sums += values * clips
        self.clips += clips

    def global_sums(self, context: DistributedContext) -> tuple[dict[str, float], int]:
        """(sums per term, clips), over all ranks. A collective: every rank calls it once per epoch."""
        clips = torch.tensor([float(self.clips)], dtype=torch.float64, device=self.sums.device)
        totals = all_reduce_sum(torch.cat([self.sums, clips]), context).tolist()
        return dict(zip(self.names, totals[:-1])), int(totals[-1])


class NonFiniteWatch:
    """Remembers, on the device, the first step (counted from 1) at which this rank's loss was non-finite."""

    def __init__(self, context: DistributedContext, first_step: int):
        self.context = context
        self.first_unchecked = first_step
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=context.device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad_now = ~torch.isfinite(loss.detach())
        self.first_bad.masked_fill_(bad_now & torch.isinf(self.first_bad), float(step))

    def due(self, step: int) -> bool:
        return step % NONFINITE_CHECK_EVERY == 0

    def check(self, step: int) -> None:
        """All ranks, at the same step: raise TrainingError on every rank if any rank recorded a non-finite loss."""
        if step < self.first_unchecked:
            return
        per_rank = torch.full((self.context.world_size,), math.inf, dtype=torch.float64, device=self.first_bad.device)
        per_rank[self.context.rank] = self.first_bad
        first_bad = all_reduce_min(per_rank, self.context).tolist()
        checked = f"steps {self.first_unchecked}-{step}"
        self.first_unchecked = step + 1
        earliest = min(first_bad)
        if math.isinf(earliest):
            return
        ranks = ", ".join(str(rank) for rank, first in enumerate(first_bad) if first == earliest)
        where, who = (f" on rank {ranks}", " on every rank") if self.context.enabled else ("", "")
        raise TrainingError(
            f"{checked}: the loss became non-finite (NaN or inf) at step {int(earliest)}{where}; training stopped"
            f"{who} before saving; lower --lr or check the targets with distinit verify"
        )
