"""Learning rate as a pure function of the step (nanoGPT's get_lr), so resuming needs only the step."""

from __future__ import annotations

import math


def learning_rate(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr_fraction: float) -> float:
    """Linear warmup from base_lr/warmup_steps to base_lr, then cosine decay to base_lr * min_lr_fraction."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return base_lr * min_lr_fraction
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_fraction + (1.0 - min_lr_fraction) * cosine)
