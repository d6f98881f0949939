"""Learning-rate schedules: linear warm-up followed by linear or cosine decay (or a constant rate), as Hugging Face
``transformers.get_scheduler`` builds them."""

from __future__ import annotations

from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

Schedule = Literal["linear", "cosine", "constant"]

_TRANSFORMERS_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def warmup_then_decay(optimizer: Optimizer, total_steps: int, warmup_steps: int, kind: Schedule) -> LambdaLR:
    """The rate's multiplier is ``step / warmup_steps`` during warm-up (0 at the first step, the Hugging Face
    Trainer's schedule), then 1 decaying to 0 at ``total_steps`` (linear or cosine), or staying 1 (constant).
    Without warm-up the first step has the peak rate."""
    if kind not in _TRANSFORMERS_NAMES:
        raise ValueError(f"lr_schedule must be one of {sorted(_TRANSFORMERS_NAMES)}, got {kind!r}")
    return get_scheduler(_TRANSFORMERS_NAMES[kind], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=max(total_steps, 1))
