"""The offline pairwise losses as terms of the chosen and rejected rows, by TRL ``loss_type`` name.

A term is ``term(chosen: RowLogps, rejected: RowLogps, **settings) -> PreferenceLoss``: it picks what its loss
reads from the rows (summed, per-token, lengths, reference) and calls the pure maths of ``lit_align.losses``.
``PAIR_LOSSES`` names them as TRL's ``DPOConfig.loss_type`` does (plus ``simpo`` and ``orpo`` of TRL's CPO and
ORPO trainers and ``wpo``, ``rpo`` for TRL's ``use_weighting`` and DPO plus an NLL term). TRL's ``ld_alpha`` is
not a term but a way of scoring the rows (``LengthDesensitizable``), as in TRL.
Each objective of ``pairwise_losses.py`` is one term with its settings; ``CombinedPairLoss`` sums several.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, get_args

import torch
import torch.distributed as dist

from lit_align import losses as L
from lit_align.losses import PreferenceLoss
from lit_align.losses.pairwise import NLLReduction
from lit_align.objectives.offline.base import OfflinePairObjective, RowLogps, completions_per_example


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


def _sigmoid(chosen, rejected, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=0.5):
    return L.dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, label_smoothing,
                      f_divergence_type, f_alpha_divergence_coef)


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


def _bco_pair(chosen, rejected, beta=0.1, running_mean=False, reward_mean: RunningRewardMean | None = None):
    shift = 0.0  # TRL 1.16's bco_pair: no shift
    if running_mean:
        rewards = beta * torch.cat([chosen.policy - chosen.reference, rejected.policy - rejected.reference])
        shift = reward_mean(rewards)
    return L.bco_pair_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, shift)


def _aot_unpaired(chosen, rejected, beta=0.1, label_smoothing=0.0):
    return L.aot_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, beta, label_smoothing,
                      paired=False)


def _sigmoid_norm(chosen, rejected, beta=0.1, label_smoothing=0.0):
    return L.length_normalized_dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference,
                                        chosen.lengths, rejected.lengths, beta, label_smoothing)


def _sft(chosen, rejected, nll_reduction="token"):
    # the "rewards" of a likelihood term: the mean per-token log-probs of both responses
    # the per-token log-probs as they are (TRL's sft reads them so, also under ld_alpha)
    nll = L.nll_loss(chosen.tokens.sum(-1), chosen.lengths, nll_reduction)
    return PreferenceLoss(nll, (chosen.policy / chosen.lengths.clamp(min=1)).detach(),
                          (rejected.policy / rejected.lengths.clamp(min=1)).detach())


def _simpo(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=0.0, cpo_alpha=0.0):
    return L.simpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, beta, gamma,
                        label_smoothing, cpo_alpha)


def _orpo(chosen, rejected, lam=0.1, nll_reduction="token"):
    return L.orpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, lam, nll_reduction)


def _wpo(chosen, rejected, beta=0.1, batch_normalized=True):
    out = _sigmoid(chosen, rejected, beta)
    weights = L.wpo_weights(chosen.tokens, chosen.mask, rejected.tokens, rejected.mask)
    if batch_normalized:
        weights = weights / weights.mean().clamp(min=torch.finfo(weights.dtype).tiny)
    return out._replace(losses=weights * out.losses)


def _rpo(chosen, rejected, beta=0.1, alpha=1.0, nll_reduction="token"):
    return L.rpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, chosen.lengths, beta,
                      alpha, nll_reduction)


def _f_divergence(term: Callable[..., PreferenceLoss], scale: str = "beta") -> Callable[..., PreferenceLoss]:
    """``term`` with TRL's ``f_divergence_type``: each response's log-ratio replaced by ``f'(pi/pi0)``
    (``lit_align.losses.f_divergence_scores``) before the loss, as TRL's DPOTrainer does for ``hinge``, ``ipo``,
    ``exo_pair``, ``robust``, ``discopop`` and ``sigmoid_norm``; the rewards stay ``scale`` times the log-ratios."""
    parameters = inspect.signature(term).parameters
    default_scale = parameters[scale].default

    @functools.wraps(term)
    def scored(chosen: RowLogps, rejected: RowLogps, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
               **settings) -> PreferenceLoss:
        if f_divergence_type == "reverse_kl":
            return term(chosen, rejected, **settings)
        ratios = [r.policy if r.reference is None else r.policy - r.reference for r in (chosen, rejected)]
        rows = [replace(r, policy=L.f_divergence_scores(ratio, f_divergence_type, f_alpha_divergence_coef),
                        reference=torch.zeros_like(ratio)) for r, ratio in zip((chosen, rejected), ratios)]
        out = term(*rows, **settings)
        weight = settings.get(scale, default_scale)
        return out._replace(chosen_rewards=weight * ratios[0].detach(), rejected_rewards=weight * ratios[1].detach())

    keyword = inspect.Parameter.KEYWORD_ONLY
    scored.__signature__ = inspect.Signature([
        *parameters.values(), inspect.Parameter("f_divergence_type", keyword, default="reverse_kl"),
        inspect.Parameter("f_alpha_divergence_coef", keyword, default=0.5)])
    return scored


@dataclass(frozen=True)
class PairTerm:
    """A named pairwise loss: its term, whether it reads reference log-probs, and the state it keeps (if any)."""

    term: Callable[..., PreferenceLoss]
    needs_reference: bool = True
    #: A module built once per use and passed to the term as ``reward_mean`` when the ``running_mean`` setting is
    #: on (BCO's running reward shift).
    state: type[torch.nn.Module] | None = None


PAIR_LOSSES: dict[str, PairTerm] = {
    "sigmoid": PairTerm(_sigmoid),
    "ipo": PairTerm(_f_divergence(_ipo, "tau")),
    "hinge": PairTerm(_f_divergence(_with_reference(L.hinge_loss))),
    "robust": PairTerm(_f_divergence(_with_reference(L.robust_dpo_loss))),
    "bco_pair": PairTerm(_bco_pair, state=RunningRewardMean),
    "apo_zero": PairTerm(_with_reference(L.apo_zero_loss)),
    "apo_down": PairTerm(_with_reference(L.apo_down_loss)),
    "nca_pair": PairTerm(_with_reference(L.nca_pair_loss)),
    "exo_pair": PairTerm(_f_divergence(_with_reference(L.exo_pair_loss))),
    "sppo_hard": PairTerm(_with_reference(L.sppo_hard_loss)),
    "discopop": PairTerm(_f_divergence(_with_reference(L.discopop_loss))),
    "aot": PairTerm(_with_reference(L.aot_loss)),
    "aot_unpaired": PairTerm(_aot_unpaired),
    "sigmoid_norm": PairTerm(_f_divergence(_sigmoid_norm)),
    "sft": PairTerm(_sft, needs_reference=False),
    "simpo": PairTerm(_simpo, needs_reference=False),
    "orpo": PairTerm(_orpo, needs_reference=False),
    "wpo": PairTerm(_wpo),
    "rpo": PairTerm(_rpo),
}


def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _in_range(name: str, value: float, low: float, high: float, closed_low: bool = True,
              closed_high: bool = False) -> float:
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    if not (above and below):
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}, "
                         f"got {value}")
    return value


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


#: Every setting's check, by name: the one place where a pair loss's settings are validated, for its objective
#: (``PairTermObjective``) and as a part of ``CombinedPairLoss`` alike. (term, value) -> None or raises.
_CHECKS: dict[str, Callable[[str, object], object]] = {
    "beta": lambda term, v: positive("beta", v),
    "tau": lambda term, v: positive("tau", v),
    "lam": lambda term, v: positive("lam", v),
    "label_smoothing": lambda term, v: (_in_range("label_smoothing", v, 0.0, 1.0, closed_low=False)
                                        if term == "exo_pair" else _in_range("label_smoothing", v, 0.0, 0.5)),
    "alpha": lambda term, v: _in_range("alpha", v, 0.0, float("inf")),
    "cpo_alpha": lambda term, v: _in_range("cpo_alpha", v, 0.0, float("inf")),
    "nll_reduction": lambda term, v: _one_of("nll_reduction", v, get_args(NLLReduction)),
    "f_divergence_type": lambda term, v: _one_of("f_divergence_type", v, L.F_DIVERGENCES),
    "f_alpha_divergence_coef": lambda term, v: positive("f_alpha_divergence_coef", v),
}


def check_settings(term: str, settings: dict) -> dict:
    """``settings`` of the ``PAIR_LOSSES`` term ``term``, each checked (``_CHECKS``); returned unchanged."""
    for name, value in settings.items():
        if name in _CHECKS:
            _CHECKS[name](term, value)
    return settings


def check_ld_alpha(ld_alpha: float | None) -> float | None:
    """LD-DPO's weight of the tokens past the shorter response of a pair: None (off) or in [0, 1]."""
    return None if ld_alpha is None else _in_range("ld_alpha", ld_alpha, 0.0, 1.0, closed_high=True)


class LengthDesensitizable(OfflinePairObjective):
    """An offline pair objective that can score both responses LD-DPO's way (Liu et al. 2024; TRL ``ld_alpha``):
    with ``ld_alpha`` set, every summed log-prob, the policy's and the reference's, counts the tokens of the longer
    response past the shorter one's length ``ld_alpha`` times (``lit_align.losses.length_desensitized_logps``).

    The reference's per-token log-probs are needed, so it must be live (``copy`` or ``lora``; a ``cache`` holds sums).
    """

    ld_alpha: float | None = None

    def use_ld_alpha(self, ld_alpha: float | None) -> None:
        """Turn LD-DPO's scoring on (called after the base's ``__init__``; None leaves it off)."""
        self.ld_alpha = check_ld_alpha(ld_alpha)
        if self.ld_alpha is not None:
            self.policy.reference.require("ld_alpha (the reference's log-probs desensitised token by token)",
                                          "samples")

    def row_logps(self, batch, source="policy") -> RowLogps:
        logps = super().row_logps(batch, source)
        if self.ld_alpha is None or completions_per_example(batch) != 2:
            return logps
        chosen, rejected = logps.lengths.chunk(2)
        public = torch.minimum(chosen, rejected).repeat(2)  # (R,): each row's pair's shorter length
        return replace(logps, policy=L.length_desensitized_logps(logps.tokens, logps.mask, public, self.ld_alpha))


class PairTermObjective(LengthDesensitizable):
    """An offline pair objective that is one ``PAIR_LOSSES`` term: a subclass names it, checks its settings with
    ``check_settings`` before the base's ``__init__`` and calls ``use_settings`` after it."""

    #: The ``PAIR_LOSSES`` name of the loss.
    term: ClassVar[str]

    def use_settings(self, **settings) -> None:
        """The term's settings (called in ``__init__`` after the base's); builds the state the term keeps."""
        self.settings = dict(settings)  # checked by the subclass with check_settings before the base's __init__
        state = PAIR_LOSSES[self.term].state
        if state is not None and settings.get("running_mean"):
            self.term_state = state()
            self.settings["reward_mean"] = self.term_state

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return PAIR_LOSSES[self.term].term(chosen, rejected, **self.settings)
