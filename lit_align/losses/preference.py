"""The preference losses: DPO, IPO, Bradley-Terry, PMLE, distillation, REBEL and the KL surrogates.

Each function takes (B,) tensors of summed completion log-probs (``ln pi(a|x)``, see ``logprobs.py``) and
returns per-example losses (B,) plus detached diagnostics, so that reduction across gradient accumulation and
ranks stays with the caller. Equation numbers follow arXiv 2506.01523 v2 ("PAPER" below) unless stated.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
F_DIVERGENCES: tuple[str, ...] = get_args(FDivergence)


class PreferenceLoss(NamedTuple):
    """Per-example loss and the implicit rewards of both responses (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def f_divergence_scores(log_ratios: torch.Tensor, divergence: FDivergence = "reverse_kl",
                        alpha: float = 0.5) -> torch.Tensor:
    """``f'(t)`` at the ratio ``t = pi / pi0`` (given as ``ln t``), the score DPO compares for an f-divergence
    regulariser (Wang et al. 2023, "Beyond reverse KL"; TRL's ``f_divergence_type``):

    - ``reverse_kl``: ``ln t`` (DPO);  ``forward_kl``: ``1 - 1/t``;  ``js_divergence``: ``ln 2 + ln s(ln t)``
      (``= ln(2t / (1 + t))``);  ``alpha_divergence``: ``(t^(alpha - 1) - 1) / (alpha - 1)`` (``ln t`` at alpha = 1;
      the exponent capped at 80, as in TRL).

    Example: ``ln t = ln 2``: reverse 0.6931, forward 0.5, JS ln(4/3) = 0.2877, alpha 0.5: (2^-0.5 - 1)/-0.5 = 0.5858.
    """
    if divergence == "reverse_kl":
        return log_ratios
    if divergence == "forward_kl":
        return 1 - torch.exp(-log_ratios)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(log_ratios)
    if divergence == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return log_ratios
        return torch.expm1(((alpha - 1.0) * log_ratios).clamp(max=80.0)) / (alpha - 1.0)
    raise ValueError(f"f_divergence_type must be one of {', '.join(F_DIVERGENCES)}, got {divergence!r}")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> PreferenceLoss:
    """DPO (PAPER Eq. 6), with conservative DPO (cDPO) label smoothing and f-divergence regularisers.

    ``-(1-eps) ln s(beta*h) - eps ln s(-beta*h)`` with ``h = (ln pi(a+) - ln pi0(a+)) - (ln pi(a-) - ln pi0(a-))``:
    ``eps`` is the assumed probability that a label is flipped. With another ``f_divergence`` than ``reverse_kl``,
    ``h = f'(pi/pi0)(a+) - f'(pi/pi0)(a-)`` (``f_divergence_scores``, alpha ``f_alpha``). Implicit rewards are
    ``beta * (ln pi - ln pi0)`` whatever the divergence (TRL's).
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    margin = (f_divergence_scores(chosen_ratio, f_divergence, f_alpha)
              - f_divergence_scores(rejected_ratio, f_divergence, f_alpha))
    logits = beta * margin
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


# -- PPO (RLHF, PAPER Eq. 1; reverse KL, PAPER Eqs. 14-15) ---------------------------------------------------------
# Per-token tensors are (N, T) over the positions of ``completion_token_logprobs`` (position t scores token t+1);
# ``mask`` (N, T) bool marks response tokens, contiguous in each row. Values off the mask are returned as zero.
# These functions return per-token values; the objective reduces them (token-weighted over the mini-batch).

def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float32, or in their own dtype when that is wider (float64 stays float64)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


class DistillationLoss(NamedTuple):
    """Per-example Bernoulli KL and the teacher's and student's probabilities that a1 beats a2 (detached)."""

    losses: torch.Tensor
    teacher_probs: torch.Tensor
    student_probs: torch.Tensor


def distillation_loss(
    policy_first: torch.Tensor,
    policy_second: torch.Tensor,
    rewards_first: torch.Tensor,
    rewards_second: torch.Tensor,
    gamma: float = 0.1,
) -> DistillationLoss:
    """Preference distillation (PAPER Eqs. 11-12): ``KL(Bern(p) || Bern(q))`` per pair.

    Teacher ``p = s(r1 - r2)`` from the rewards (no gradient flows into them); student
    ``q = s(gamma * (ln pi(a1|x) - ln pi(a2|x)))``. In logit form, with ``t = r1 - r2`` and
    ``u = gamma * (ln pi(a1) - ln pi(a2))``:
    ``KL = p (ln s(t) - ln s(u)) + (1 - p) (ln s(-t) - ln s(-u))``, whose derivative in ``u`` is ``q - p``:
    it vanishes exactly at the fixed point ``gamma * (ln pi(a1) - ln pi(a2)) = r1 - r2``. Symmetric under
    swapping (a1, r1) with (a2, r2), so no chosen/rejected labels are needed.
    """
    teacher_logits = _at_least_float32((rewards_first - rewards_second).detach())
    student_logits = gamma * (policy_first - policy_second)
    p = torch.sigmoid(teacher_logits)
    losses = p * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits)) + (1 - p) * (
        F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits)
    )
    return DistillationLoss(losses, p, torch.sigmoid(student_logits.detach()))


class RegressionLoss(NamedTuple):
    """Per-example squared error, with the prediction and the target it regresses onto (detached)."""

    losses: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor


def rebel_loss(
    policy_first: torch.Tensor,
    policy_second: torch.Tensor,
    old_first: torch.Tensor,
    old_second: torch.Tensor,
    rewards_first: torch.Tensor,
    rewards_second: torch.Tensor,
    eta: float = 1.0,
) -> RegressionLoss:
    """REBEL (PAPER Eq. 10, Gao et al. 2024): ``((ln pi(a1)/pi_t(a1) - ln pi(a2)/pi_t(a2)) - eta (r1 - r2))^2``.

    ``old_*`` are ``ln pi_t`` of the policy that sampled the pair, ``rewards_*`` the (KL-shaped) rewards; neither
    carries gradient. With ``pi_t(a1) = pi_t(a2)`` the gradient vanishes at ``ln pi(a1) - ln pi(a2) = eta (r1 - r2)``,
    the distillation fixed point for ``eta = 1 / gamma``.
    """
    predictions = (policy_first - old_first.detach()) - (policy_second - old_second.detach())
    targets = eta * _at_least_float32((rewards_first - rewards_second).detach())
    return RegressionLoss((predictions - targets) ** 2, predictions.detach(), targets)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> PreferenceLoss:
    """Bradley-Terry reward-model loss (PAPER Eq. 9): ``-ln s(R(x,a+) - R(x,a-))`` on scalar rewards (B,)."""
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def pmle_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, gamma: float = 0.1) -> PreferenceLoss:
    """Preference MLE (PAPER Eq. 4): ``-ln s(gamma * (ln pi(a+) - ln pi(a-)))``.

    No reference inside the sigmoid: the preference model is the gamma-tilted policy itself (Eq. 2/3).
    Implicit rewards are the policy's induced rewards ``gamma * ln pi``.
    """
    losses = -F.logsigmoid(gamma * (policy_chosen - policy_rejected))
    return PreferenceLoss(losses, gamma * policy_chosen.detach(), gamma * policy_rejected.detach())


def sampled_kl_surrogate(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    num_samples: int,
    sampling_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-function surrogate of KL(pi || pi0) on responses sampled from pi (PAPER 2a, "gradient trap").

    ``policy_logps`` (N,) with gradient and ``reference_logps`` (N,) are the sequence log-probs of N = B * k
    samples, row ``i * k + j`` being sample j of prompt i. With ``kl_j = ln pi(y_j) - ln pi0(y_j)`` (detached)
    and the leave-one-out baseline ``b_j`` = mean of the other k - 1 samples' ``kl``, the surrogate is
    ``kl_j + (kl_j - b_j) * (ln pi(y_j) - stopgrad ln pi(y_j))``: its value is the plain estimate ``kl_j`` and
    its gradient ``(kl_j - b_j) grad ln pi(y_j)``, whose expectation is the exact gradient of KL(pi || pi0) (the
    baseline is independent of y_j, so it adds no bias). Back-propagating through ``kl_j`` itself would have
    expected gradient zero. Returns (surrogate (N,), kl estimate (N,) detached).

    ``sampling_logps`` (N,): ln pi_t(y_j) of the policy that drew the samples, when pi has moved since (several
    epochs on one batch). Value and gradient are then importance-weighted by ``rho_j = pi(y_j) / pi_t(y_j)``
    (detached): ``E_{pi_t}[rho f] = E_pi[f]``, so both stay unbiased for KL(pi || pi0) and its gradient.
    Example: k = 2, ln pi = (-1, -2), ln pi0 = (-1.5, -1), ln pi_t = ln pi - (0, ln 2): rho = (1, 2),
    value (0.5, -2), gradient in ln pi (1.5, -3).
    """
    if num_samples < 2:
        raise ValueError(f"the leave-one-out baseline needs num_samples >= 2, got {num_samples}")
    if policy_logps.shape[0] % num_samples:
        raise ValueError(f"{policy_logps.shape[0]} rows are not whole groups of {num_samples} samples")
    kl = (policy_logps - reference_logps).detach()
    grouped = kl.view(-1, num_samples)  # (B, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (num_samples - 1)
    advantage = (grouped - baseline).reshape(-1)  # (N,)
    weight = 1.0 if sampling_logps is None else torch.exp(policy_logps.detach() - sampling_logps.detach())
    surrogate = weight * (kl + advantage * (policy_logps - policy_logps.detach()))
    return surrogate, (weight * kl).detach()


def token_kl_surrogate(
    token_kls: torch.Tensor, token_logps: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-token KL along sampled responses, with the gradient of the sequence KL (PAPER 2a, token_full).

    ``token_kls`` (N, T): KL(pi(.|s_t) || pi0(.|s_t)) over the vocabulary at every state s_t of a sampled
    response, with gradient; ``token_logps`` (N, T): ln pi(a_t|s_t) of the sampled tokens, with gradient;
    ``mask`` (N, T): response positions. The value is sum_t KL_t, whose expectation is KL(pi || pi0). Its direct
    gradient misses how pi chooses the states that later KLs are taken at, so the surrogate adds the score-function
    term ``sum_t ln pi(a_t|s_t) * stopgrad(sum_{t' > t} KL_t')`` (value zero): then the expected gradient is
    exact. Returns (surrogate (N,), kl estimate (N,) detached).
    """
    mask = mask.to(token_kls.dtype)
    kls = token_kls * mask
    logps = token_logps * mask
    later = (kls.detach().flip(-1).cumsum(-1).flip(-1) - kls.detach())  # (N, T): sum of the KLs after t
    score = (logps - logps.detach()) * later
    kl = kls.sum(-1)
    return kl + score.sum(-1), kl.detach()
