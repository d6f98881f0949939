"""Metric accumulation that stays correct under gradient accumulation and across ranks.

Each named value feeds a ``torchmetrics.MeanMetric`` over the micro-batches of one optimizer step (or one
validation epoch); its (sum, count) states are summed over ranks once before dividing, so a logged mean is the
mean over every example that contributed: never a mean of per-rank or per-micro-batch means, and an accuracy can
never exceed 1. The sums are float32 whatever the trainer's precision. The metrics are no submodules, so nothing of them is in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torchmetrics import MeanMetric

from lit_align.losses import PreferenceLoss


class StageMeans:
    """Example-weighted means of named values, one ``MeanMetric`` per name, created on the name's first value.

    A tensor of n values counts as n examples, a scalar as one.
    """

    def __init__(self) -> None:
        self._means: dict[str, MeanMetric] = {}  # kept over resets: a name is logged again next step
        self._updated: set[str] = set()  # the names seen since the last reset

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach()
            metric = self._means.get(name)
            if metric is None:
                metric = self._means[name] = _mean_metric(value.device)
            elif metric.device != value.device:
                _move(metric, value.device)  # a stage run again on another device
            metric.update(value)
            self._updated.add(name)

    def compute(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Means of everything seen since the last reset, over all ranks when ``torch.distributed`` runs more than
        one: then a collective, which every rank must call. ``device`` is where the states are summed (the
        collective backend's device); by default where they are."""
        names = set(self._updated)
        if _distributed():
            # Each name's sync is a collective of its own: every rank must run them for the same names in the same
            # order, including a name only some ranks saw (a rank skipping it would leave the others waiting).
            seen: list[set[str] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(seen, names)
            names = set().union(*seen)
        for name in sorted(names):
            metric = self._means.get(name)
            if metric is None:
                metric = self._means[name] = _mean_metric(torch.device(device or self._device()))
            elif device is not None and metric.device != torch.device(device):
                _move(metric, device)
            if name not in self._updated:  # seen on another rank only: counts as updated (no warning), no example
                metric.update(torch.empty(0, device=metric.device))
        return {name: self._means[name].compute() for name in sorted(names)}

    def _device(self) -> torch.device:
        return next((m.device for m in self._means.values()), torch.device("cpu"))

    def reset(self) -> None:
        for metric in self._means.values():
            metric.reset()
        self._updated.clear()


def _mean_metric(device: torch.device) -> MeanMetric:
    # nan_strategy="disable": a NaN loss shows as NaN in the logs rather than being dropped, and no update waits
    # for the device to check for NaNs. The cross-rank sync sums each state with one all-reduce instead of
    # torchmetrics' default all-gather of every rank's copy (two collectives each, shapes first).
    # The states are float32 whatever the step's default dtype: under precision="bf16-true" Lightning makes
    # bfloat16 the default inside the step, where a metric is created on its name's first value, and a bfloat16
    # sum of ln 2 over a few hundred examples reads 0.7148. torchmetrics casts every value to the dtype that was
    # the default when the metric was made, so it is made under float32.
    with float32_default():
        metric = MeanMetric(nan_strategy="disable", dist_sync_fn=_all_reduce_sum,
                            distributed_available_fn=_distributed)
    return _move(metric, device)


def _move(metric: MeanMetric, device: torch.device | str) -> MeanMetric:
    # torchmetrics re-reads its dtype from a tensor made under the default dtype at every move
    with float32_default():
        return metric.to(device)


@contextmanager
def float32_default() -> Iterator[None]:
    """Float32 as torch's default dtype for the block (bookkeeping made lazily inside a bf16-true step)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _all_reduce_sum(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    # torchmetrics stacks what this returns and applies the state's "sum" reduction: one summed tensor is the total.
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return [total]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def preference_metrics(out: PreferenceLoss) -> dict[str, torch.Tensor]:
    """Per-example diagnostics of a pairwise loss under the names TRL users know (``rewards/*``)."""
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
    }
