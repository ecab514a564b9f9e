"""What distill's training loop keeps of its losses, without a host sync each step.

`LossTotals`: per-term numerators and denominators summed on the device, made global (summed over ranks) and
divided once, at the end of the epoch: the figures one process would get over all the clips at once. A mid-epoch
checkpoint keeps each rank's running sums (`state_dict`), so a resumed epoch's figures still cover the whole epoch.
A non-finite loss stops the run with a TrainingError (pipeline.training.loss_tracking.NonFiniteWatch).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from distinit.distill.losses import DistillationLoss
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.training.distributed import DistributedContext, all_reduce_sum


class TrainingError(DistinitError):
    """Training cannot go on (a non-finite loss)."""


# What a TrainingError tells the user to do about a non-finite loss.
DISTILL_HINT = "lower --lr or check the targets with distinit verify"


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

