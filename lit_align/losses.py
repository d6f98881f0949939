"""Every objective's maths, as pure functions of per-sequence log-probabilities.

Each function takes (B,) tensors of summed completion log-probs (``ln pi(a|x)``, see ``logprobs.py``) and
returns per-example losses (B,) plus detached diagnostics, so that reduction across gradient accumulation and
ranks stays with the caller. Equation numbers follow arXiv 2506.01523 v2 ("PAPER" below) unless stated.
This module imports torch only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    """Per-example loss and the implicit rewards of both responses (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO (PAPER Eq. 6), with conservative DPO (cDPO) label smoothing.

    ``-(1-eps) ln s(beta*h) - eps ln s(-beta*h)`` with ``h = (ln pi(a+) - ln pi0(a+)) - (ln pi(a-) - ln pi0(a-))``:
    ``eps`` is the assumed probability that a label is flipped. Implicit rewards are ``beta * (ln pi - ln pi0)``.
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    tau: float = 0.1,
) -> PreferenceLoss:
    """IPO (Azar et al. 2023, Eq. 17): ``(h - 1/(2 tau))^2`` with the DPO log-ratio difference ``h``.

    Sequence log-probs are summed, as for every loss here (the IPO paper's own convention).
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * tau)) ** 2
    return PreferenceLoss(losses, tau * chosen_ratio.detach(), tau * rejected_ratio.detach())
