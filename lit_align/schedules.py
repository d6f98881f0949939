"""Learning-rate schedules: linear warm-up followed by linear or cosine decay (or a constant rate)."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["linear", "cosine", "constant"]


def warmup_then_decay(optimizer: Optimizer, total_steps: int, warmup_steps: int, kind: Schedule) -> LambdaLR:
    """Multiplier ramps 0 -> 1 over ``warmup_steps``, then decays to 0 at ``total_steps`` (or stays 1)."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
