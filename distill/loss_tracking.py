"""What the training loop keeps of its losses, without a host sync each step.

- `LossTotals`: per-term numerators and denominators summed on the device, made global (summed over ranks)
  and divided once, at the end of the epoch: the figures one process would get over all the clips at once.
  A mid-epoch checkpoint keeps each rank's running sums (`state_dict`), so a resumed epoch's figures still
  cover the whole epoch.
- `NonFiniteWatch`: the first step whose loss was non-finite, on the device; every NONFINITE_CHECK_EVERY
  steps, before each checkpoint and at the end of the epoch all ranks compare notes (one all-reduce, MIN)
  and, if any rank saw one, every rank raises the same TrainingError together. Raising on the one rank
  alone would leave the others waiting in DDP's next all-reduce until the backend timed out. Eval's
  finetuning (one process) uses it too, with its own error type and hint.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from distinit.distill.distributed import DistributedContext, all_reduce_min, all_reduce_sum
from distinit.distill.losses import DistillationLoss
from distinit.pipeline.errors import DistinitError

# Steps between non-finite checks: each one waits for the device, so not every step.
NONFINITE_CHECK_EVERY = 20


class TrainingError(DistinitError):
    """Training cannot go on (a non-finite loss)."""


class LossTotals:
    """An epoch's loss figures on `device`, the same for any batch size and number of processes: each `kd/` term's
    numerator and denominator (`DistillationLoss.report_parts`) summed over steps and ranks, divided once; `loss`
    is their teacher-weighted sum."""

    def __init__(self, loss_fn: DistillationLoss, device: torch.device):
        self.loss_fn = loss_fn
        self.names = loss_fn.term_names[1:]  # the kd/ terms
        # (2, terms): numerators, denominators
        self.parts = torch.zeros(2, len(self.names), dtype=torch.float64, device=device)
        self.clips = 0

    def add(self, terms: Mapping[str, torch.Tensor], clips: int) -> None:
        self.parts += self.loss_fn.report_parts(terms, clips)
        self.clips += clips

    def state_dict(self) -> dict[str, Any]:
        """This rank's running sums, for a mid-epoch checkpoint (waits for the device; checkpoints wait anyway)."""
        return {"parts": self.parts.to("cpu", copy=True), "clips": self.clips}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Go on from the running sums `state_dict` gave (the same rank's, before a resume; the run key fixes
        the targets, so the loss has the same terms)."""
        self.parts.copy_(saved["parts"])
        self.clips = int(saved["clips"])

    def global_figures(self, context: DistributedContext) -> tuple[dict[str, float], int]:
        """({"loss": ..., "kd/<key>": ...}, clips), over all ranks. A collective: every rank calls it once per epoch."""
        clips = torch.tensor([float(self.clips)], dtype=torch.float64, device=self.parts.device)
        totals = all_reduce_sum(torch.cat([self.parts.reshape(-1), clips]), context).tolist()
        count = len(self.names)
        numerators, denominators = totals[:count], totals[count:2 * count]
        # A keypoint term with nobody in the whole epoch is 0, as the loss gives for a batch with nobody.
        figures = {name: numerator / denominator if denominator > 0 else 0.0
                   for name, numerator, denominator in zip(self.names, numerators, denominators)}
        return {"loss": self.loss_fn.weighted_total(figures), **figures}, int(totals[-1])


DISTILL_HINT = "lower --lr or check the targets with distinit verify"


class NonFiniteWatch:
    """Remembers, on the device, the first step (counted from 1) at which this rank's loss was non-finite; `check`
    raises `error` (a DistinitError class) ending with `hint`, what the user can do about it."""

    def __init__(self, context: DistributedContext, first_step: int, *,
                 error: type[DistinitError] = TrainingError, hint: str = DISTILL_HINT):
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
