"""The stop on a non-finite loss, without a host sync each step.

`NonFiniteWatch` keeps the first step whose loss was non-finite on the device; every NONFINITE_CHECK_EVERY steps,
before each checkpoint and at the end of the epoch all ranks compare notes (one all-reduce, MIN) and, if any rank
saw one, every rank raises the same error together. Raising on the one rank alone would leave the others waiting
in DDP's next all-reduce until the backend timed out. distill's training and evaluate's finetuning (one process)
use it, each with its own error type and hint.
"""

from __future__ import annotations

import math

import torch

from distinit.pipeline.errors import DistinitError
from distinit.pipeline.training.distributed import DistributedContext, all_reduce_min

# Steps between non-finite checks: each one waits for the device, so not every step.
NONFINITE_CHECK_EVERY = 20


class NonFiniteWatch:
    """Remembers, on the device, the first step (counted from 1) at which this rank's loss was non-finite; `check`
    raises `error` (a DistinitError class) ending with `hint`, what the user can do about it."""

    def __init__(self, context: DistributedContext, first_step: int, *, error: type[DistinitError], hint: str):
        self.context = context
        self.error, self.hint = error, hint
        self.first_unchecked = first_step
        self.first_bad = torch.full((), math.inf, dtype=torch.float64, device=context.device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad_now = ~torch.isfinite(loss.detach())
        self.first_bad.masked_fill_(bad_now & torch.isinf(self.first_bad), float(step))

    def due(self, step: int) -> bool:
        return step % NONFINITE_CHECK_EVERY == 0

    def check(self, step: int) -> None:
        """All ranks, at the same step: raise `error` on every rank if any rank recorded a non-finite loss."""
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
        raise self.error(
            f"{checked}: the loss became non-finite (NaN or inf) at step {int(earliest)}{where}; training stopped"
            f"{who} before saving; {self.hint}"
        )
