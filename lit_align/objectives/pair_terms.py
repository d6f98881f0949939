"""The offline pairwise losses as terms of the chosen and rejected rows, by TRL ``loss_type`` name.

A term is ``term(chosen: RowLogps, rejected: RowLogps, **settings) -> PreferenceLoss``: it picks what its loss
reads from the rows (summed, per-token, lengths, reference) and calls the pure maths of ``lit_align.losses``.
``PAIR_LOSSES`` names them as TRL's ``DPOConfig.loss_type`` does (plus ``simpo`` and ``orpo`` of TRL's CPO and
ORPO trainers and ``ld_dpo``, ``wpo``, ``rpo`` for TRL's ``ld_alpha``, ``use_weighting`` and ``rpo_alpha``).
Each objective of ``pairwise_losses.py`` is one term with its settings; ``CombinedPairLoss`` sums several.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist

from lit_align import losses as L
from lit_align.losses import PreferenceLoss
from lit_align.objectives.offline import OfflinePairObjective, RowLogps


class RunningRewardMean(torch.nn.Module):
    """BCO's reward shift: the mean implicit reward of every response trained on so far (over all ranks).

    Updated in training mode only (validation reads it without moving it); kept in checkpoints (buffers).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

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


def _sigmoid(chosen, rejected, beta=0.1, label_smoothing=0.0):
    return L.dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, label_smoothing)


def _ipo(chosen, rejected, tau=0.1, length_normalized=False):
    if length_normalized:  # TRL's ipo
        return L.length_normalized_ipo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference,
                                            chosen.lengths, rejected.lengths, tau)
    return L.ipo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, tau)


def _with_reference(loss: Callable[..., PreferenceLoss]) -> Callable[..., PreferenceLoss]:
    """The term of a loss of the four summed log-probs and its own settings."""
    @functools.wraps(loss)  # the loss's name, docstring and signature (its settings, for CombinedPairLoss)
    def term(chosen: RowLogps, rejected: RowLogps, **settings) -> PreferenceLoss:
        return loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, **settings)

    return term


def _bco_pair(chosen, rejected, beta=0.1, running_mean: RunningRewardMean | None = None):
    shift = None
    if running_mean is not None:
        rewards = beta * torch.cat([chosen.policy - chosen.reference, rejected.policy - rejected.reference])
        shift = running_mean(rewards)
    return L.bco_pair_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, shift)


def _aot_unpaired(chosen, rejected, beta=0.1, label_smoothing=0.0):
    return L.aot_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, label_smoothing,
                      paired=False)


def _sigmoid_norm(chosen, rejected, beta=0.1, label_smoothing=0.0):
    return L.length_normalized_dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference,
                                        chosen.lengths, rejected.lengths, beta, label_smoothing)


def _sft(chosen, rejected):
    # the "rewards" of a likelihood term: the mean per-token log-probs of both responses
    nll = L.nll_loss(chosen.policy, chosen.lengths)
    return PreferenceLoss(nll, -nll.detach(), -L.nll_loss(rejected.policy, rejected.lengths).detach())


def _simpo(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=0.0):
    return L.simpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, beta, gamma,
                        label_smoothing)


def _orpo(chosen, rejected, lam=0.1):
    return L.orpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, lam)


def _ld_dpo(chosen, rejected, beta=0.1, alpha=0.5):
    # TRL's form: only the policy's log-probs are desensitised, the reference's stay summed
    public = torch.minimum(chosen.lengths, rejected.lengths)
    policy_chosen = L.length_desensitized_logps(chosen.tokens, chosen.mask, public, alpha)
    policy_rejected = L.length_desensitized_logps(rejected.tokens, rejected.mask, public, alpha)
    return L.dpo_loss(policy_chosen, policy_rejected, chosen.reference, rejected.reference, beta)


def _wpo(chosen, rejected, beta=0.1, batch_normalized=True):
    out = _sigmoid(chosen, rejected, beta)
    weights = L.wpo_weights(chosen.tokens, chosen.mask, rejected.tokens, rejected.mask)
    if batch_normalized:
        weights = weights / weights.mean().clamp(min=torch.finfo(weights.dtype).tiny)
    return out._replace(losses=weights * out.losses)


def _rpo(chosen, rejected, beta=0.1, alpha=1.0):
    return L.rpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, chosen.lengths, beta,
                      alpha)


@dataclass(frozen=True)
class PairTerm:
    """A named pairwise loss: its term, whether it reads reference log-probs, and the state it keeps (if any)."""

    term: Callable[..., PreferenceLoss]
    needs_reference: bool = True
    #: A module built once per use and passed to the term as ``running_mean`` (BCO's reward shift).
    state: type[torch.nn.Module] | None = None


PAIR_LOSSES: dict[str, PairTerm] = {
    "sigmoid": PairTerm(_sigmoid),
    "ipo": PairTerm(_ipo),
    "hinge": PairTerm(_with_reference(L.hinge_loss)),
    "robust": PairTerm(_with_reference(L.robust_dpo_loss)),
    "bco_pair": PairTerm(_bco_pair, state=RunningRewardMean),
    "apo_zero": PairTerm(_with_reference(L.apo_zero_loss)),
    "apo_down": PairTerm(_with_reference(L.apo_down_loss)),
    "nca_pair": PairTerm(_with_reference(L.nca_pair_loss)),
    "exo_pair": PairTerm(_with_reference(L.exo_pair_loss)),
    "sppo_hard": PairTerm(_with_reference(L.sppo_hard_loss)),
    "discopop": PairTerm(_with_reference(L.discopop_loss)),
    "aot": PairTerm(_with_reference(L.aot_loss)),
    "aot_unpaired": PairTerm(_aot_unpaired),
    "sigmoid_norm": PairTerm(_sigmoid_norm),
    "sft": PairTerm(_sft, needs_reference=False),
    "simpo": PairTerm(_simpo, needs_reference=False),
    "orpo": PairTerm(_orpo, needs_reference=False),
    "ld_dpo": PairTerm(_ld_dpo),
    "wpo": PairTerm(_wpo),
    "rpo": PairTerm(_rpo),
}


def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class PairTermObjective(OfflinePairObjective):
    """An offline pair objective that is one ``PAIR_LOSSES`` term: a subclass names it and calls ``use_settings``."""

    #: The ``PAIR_LOSSES`` name of the loss.
    term: ClassVar[str]

    def use_settings(self, **settings) -> None:
        """The term's settings (called in ``__init__`` after the base's); builds the state the term keeps."""
        self.settings = settings
        state = PAIR_LOSSES[self.term].state
        if state is not None:
            self.term_state = state()
            self.settings["running_mean"] = self.term_state

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return PAIR_LOSSES[self.term].term(chosen, rejected, **self.settings)
