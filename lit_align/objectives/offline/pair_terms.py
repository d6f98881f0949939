"""What the offline pair objectives share besides their base: the checks of their settings, TRL's f-divergence
regulariser applied to the rows, and BCO's running reward mean.

Every pair objective is one thin ``OfflinePairObjective`` whose ``pair_loss`` calls a pure function of
``lit_align.losses``; ``CombinedPairLoss`` sums the ``pair_loss`` of several of them. Nothing here computes a loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import get_args

import torch
import torch.distributed as dist

from lit_align import losses as L
from lit_align.losses import PreferenceLoss
from lit_align.losses.pairwise import NLLReduction
from lit_align.objectives.offline.base import RowLogps


class RunningRewardMean(torch.nn.Module):
    """BCO's reward shift: the mean implicit reward of every response trained on so far (over all ranks).

    Updated in training mode only (validation reads it without moving it); kept in checkpoints (buffers).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        # precision="bf16-true" casts every floating buffer of the module to bfloat16, where a count stops at 256:
        # the sums stay float64 (moves to a device still apply)
        super()._apply(fn, recurse)
        self.total, self.count = self.total.to(torch.float64), self.count.to(torch.float64)
        return self

    def forward(self, rewards: torch.Tensor) -> torch.Tensor:
        """The shift for a batch of rewards: the running mean including them (training) or as it stands."""
        if self.training:
            seen = torch.stack([rewards.detach().double().sum(), torch.tensor(float(rewards.numel()),
                                                                               dtype=torch.float64)])
            seen = seen.to(self.total.device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(seen)  # one shift for every rank, as if the global batch were seen at once
            self.total += seen[0]
            self.count += seen[1]
        if self.count == 0:  # validation before any training step: this batch's own mean
            return rewards.detach().mean()
        return (self.total / self.count).to(rewards.dtype)


@dataclass(frozen=True)
class FDivergence:
    """TRL's f-divergence regulariser of a pair loss, checked when made: ``kind`` (its ``f_divergence_type``:
    ``reverse_kl``, ``forward_kl``, ``js_divergence``, ``alpha_divergence``) and ``alpha`` (its
    ``f_alpha_divergence_coef``, the alpha of ``alpha_divergence``)."""

    kind: L.FDivergence = "reverse_kl"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check(f_divergence_type=self.kind, f_alpha_divergence_coef=self.alpha)

    def apply(self, loss: Callable[[RowLogps, RowLogps], PreferenceLoss], chosen: RowLogps, rejected: RowLogps,
              scale: float) -> PreferenceLoss:
        """``loss(chosen, rejected)`` with each response's log-ratio replaced by ``f'(pi/pi0)``
        (``lit_align.losses.f_divergence_scores``) first, as TRL's DPOTrainer does for ``hinge``, ``ipo``,
        ``exo_pair``, ``robust``, ``discopop`` and ``sigmoid_norm``; the rewards stay ``scale`` times the
        log-ratios. ``reverse_kl`` is the loss as it is."""
        if self.kind == "reverse_kl":
            return loss(chosen, rejected)
        ratios = [r.policy if r.reference is None else r.policy - r.reference for r in (chosen, rejected)]
        rows = [replace(r, policy=L.f_divergence_scores(ratio, self.kind, self.alpha),
                        reference=torch.zeros_like(ratio)) for r, ratio in zip((chosen, rejected), ratios)]
        out = loss(*rows)
        return out._replace(chosen_rewards=scale * ratios[0].detach(), rejected_rewards=scale * ratios[1].detach())


# -- the checks of the settings, one per setting name, shared by every objective ----------------------------------

def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def in_range(name: str, value: float, low: float, high: float, closed_low: bool = True,
             closed_high: bool = False) -> float:
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    if not (above and below):
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}, "
                         f"got {value}")
    return value


def one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


#: Every setting's check, by name: an objective's ``__init__`` checks its settings with ``check`` before loading.
_CHECKS: dict[str, Callable[[str, object], object]] = {
    "beta": positive,
    "tau": positive,
    "lam": positive,
    "label_smoothing": lambda name, v: in_range(name, v, 0.0, 0.5),  # EXO's own range: EXOPair checks it
    "alpha": lambda name, v: in_range(name, v, 0.0, float("inf")),
    "cpo_alpha": lambda name, v: in_range(name, v, 0.0, float("inf")),
    "nll_reduction": lambda name, v: one_of(name, v, get_args(NLLReduction)),
    "f_divergence_type": lambda name, v: one_of(name, v, L.F_DIVERGENCES),
    "f_alpha_divergence_coef": positive,
}


def check(**settings) -> None:
    """Check each of ``settings`` by its name (``_CHECKS``); a name without a check passes."""
    for name, value in settings.items():
        if name in _CHECKS:
            _CHECKS[name](name, value)


def check_ld_alpha(ld_alpha: float | None) -> float | None:
    """LD-DPO's weight of the tokens past the shorter response of a pair: None (off) or in [0, 1]."""
    return None if ld_alpha is None else in_range("ld_alpha", ld_alpha, 0.0, 1.0, closed_high=True)
