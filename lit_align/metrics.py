"""Metric accumulation that stays correct under gradient accumulation and across ranks.

Each value is summed with its count over the micro-batches of one optimizer step (or one validation epoch) and
the sums are all-reduced once before dividing, so a logged mean is the mean over every example that contributed:
never a mean of per-rank or per-micro-batch means, and an accuracy can never exceed 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_align.losses import PreferenceLoss


class MeanAccumulator:
    """Example-weighted running means of named values."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self._sums[name] = self._sums.get(name, 0.0) + value.sum()
            self._counts[name] = self._counts.get(name, 0.0) + value.numel()

    def compute(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Means of everything seen since the last reset; ``all_reduce_sum`` sums a tensor across ranks."""
        if not self._sums:
            return {}
        names = sorted(self._sums)  # the same order on every rank
        sums = torch.stack([torch.as_tensor(self._sums[n]) for n in names])
        counts = torch.stack([torch.as_tensor(self._counts[n], device=sums.device, dtype=sums.dtype) for n in names])
        totals = torch.cat([sums, counts])
        if all_reduce_sum is not None:
            totals = all_reduce_sum(totals)
        sums, counts = totals[: len(names)], totals[len(names) :]
        return {n: s / c.clamp(min=1) for n, s, c in zip(names, sums, counts)}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()


def preference_metrics(out: PreferenceLoss) -> dict[str, torch.Tensor]:
    """Per-example diagnostics of a pairwise loss under the names TRL users know (``rewards/*``)."""
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
    }
