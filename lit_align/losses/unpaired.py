"""Losses of unpaired feedback: one completion per example, labelled desirable or undesirable (KTO)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch


class UnpairedLoss(NamedTuple):
    """Per-example loss (B,) and the implicit rewards ``beta * (ln pi - ln pi0)`` (B,), detached."""

    losses: torch.Tensor
    rewards: torch.Tensor


def kto_reference_point(mismatched_policy: torch.Tensor, mismatched_reference: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z0`` (Ethayarajh et al. 2024, Sec. 4.1): ``max(0, mean(ln pi(y'|x) - ln pi0(y'|x)))``
    over mismatched pairs (x, y') (a prompt with another example's completion), detached.

    The mean is a biased but cheap estimate of KL(pi(y|x) || pi0(y|x)); a distributed caller averages the log-ratios
    of every rank before clamping. Example: log-ratios 0.5 and -1.5 give max(0, -0.5) = 0.
    """
    return (mismatched_policy - mismatched_reference).detach().float().mean().clamp(min=0)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto",
) -> UnpairedLoss:
    """KTO (Ethayarajh et al. 2024, Eq. 8) with the reference point ``z0`` (``kto_reference_point``).

    With ``r = ln pi(y|x) - ln pi0(y|x)``, a desirable example costs ``w_d * (1 - s(beta * (r - z0)))`` and an
    undesirable one ``w_u * (1 - s(beta * (z0 - r)))`` (the paper's ``lambda_y - v(x, y)``, up to the constant).
    ``loss_type="apo_zero_unpaired"`` (APO-zero on unpaired rows, D'Oosterlinck et al. 2024; TRL's KTO option):
    ``w_d * (1 - s(beta r))`` and ``w_u * s(beta r)``, no reference point (``reference_point`` is ignored).

    Example: ``r = 2``, ``z0 = 0``, ``beta = 0.5``: desirable ``1 - s(1) = 0.2689``, undesirable ``1 - s(-1) =
    0.7311``; apo_zero_unpaired: desirable 0.2689, undesirable ``s(1) = 0.7311``.

    Args:
        policy: (B,) summed completion log-probs under the policy.
        reference: (B,) the same under pi_0.
        desirable: (B,) bool label.
        reference_point: z0, a detached scalar.
        beta: Scale of the log-ratio.
        desirable_weight: w_d.
        undesirable_weight: w_u.
    """
    ratio = policy - reference
    if loss_type == "apo_zero_unpaired":
        reference_point = 0.0  # the same two expressions without z0: 1 - s(beta r) and 1 - s(-beta r) = s(beta r)
    elif loss_type != "kto":
        raise ValueError(f"loss_type must be kto or apo_zero_unpaired, got {loss_type!r}")
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (ratio - reference_point)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (reference_point - ratio)))
    losses = torch.where(desirable.bool(), desirable_losses, undesirable_losses)
    return UnpairedLoss(losses, beta * ratio.detach())
