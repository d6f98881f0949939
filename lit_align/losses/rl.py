"""The per-token maths of RLHF with PPO and of reverse KL: KL-penalised rewards, whitening, GAE, clipped losses.

Tensors are (N, T-1), aligned like ``lit_align.models.logprobs.completion_token_logprobs``, with a response mask.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

class TokenRewards(NamedTuple):
    """Per-token PPO rewards (N, T) and their parts, all detached."""

    rewards: torch.Tensor
    non_score_rewards: torch.Tensor
    kl: torch.Tensor


class ClippedLoss(NamedTuple):
    """Per-token clipped loss (N, T) and detached diagnostics: whether the clipped branch was taken and, for the
    policy loss, the approximate KL ``0.5 (ln pi - ln pi_old)^2`` between the current and the sampling policy."""

    losses: torch.Tensor
    clipped: torch.Tensor
    approx_kl: torch.Tensor | None = None


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_0) from sampled tokens (Schulman's estimators).

    ``k1 = ln pi - ln pi_0`` (unbiased, can be negative); ``k3 = (r - 1) - ln r`` with ``r = pi_0 / pi``
    (unbiased, never negative, lower variance). Example: ``ln pi = -1, ln pi_0 = -2``: k1 = 1,
    k3 = (e^-1 - 1) + 1 = 0.3679.
    """
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be k1 or k3, got {estimator!r}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last set position of each row of a (N, T) mask -> (N,)."""
    # cumsum reaches its maximum at the last set position and stays there; argmax returns the first maximum
    return mask.long().cumsum(-1).argmax(-1)


def ppo_token_rewards(
    scores: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    entropy_coef: float = 0.0,
    kl_estimator: str = "k1",
) -> TokenRewards:
    """Per-token rewards of RLHF (PAPER Eq. 1) and reverse-KL minimisation (PAPER Eq. 14, 2d default).

    At every response token ``-kl_coef * KL_t - entropy_coef * ln pi_old(a_t|s_t)``, with ``KL_t`` the per-token
    estimate of ``kl_penalty``, plus the sequence score ``R`` (N,) at the last response token. In expectation over
    pi_old the per-token terms sum to ``-beta KL(pi||pi_0) + gamma H(pi)``; ``entropy_coef = 0`` is RLHF.
    Example: one token, R = 1, ln pi_old = -1, ln pi_0 = -2, beta = 0.5, gamma = 0.1: 1 - 0.5 + 0.1 = 0.6.
    """
    mask = mask.bool()
    kl = kl_penalty(old_logps, ref_logps, kl_estimator).masked_fill(~mask, 0.0)
    non_score = -kl_coef * kl - entropy_coef * old_logps.masked_fill(~mask, 0.0)
    rewards = non_score.clone()
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return TokenRewards(rewards.detach(), non_score.detach(), kl.detach())


def _masked_moments(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of ``values`` over the set positions of ``mask``."""
    m = mask.bool().to(values.dtype)
    count = m.sum().clamp(min=2)
    mean = (values * m).sum() / m.sum().clamp(min=1)
    var = (((values - mean) * m) ** 2).sum() / (count - 1)
    return mean, var


def whitening_scale(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The factor ``1 / sqrt(var + eps)`` by which ``masked_whiten`` multiplies ``values`` (a detached scalar)."""
    return torch.rsqrt(_masked_moments(values.detach(), mask)[1] + eps)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean with ``shift_mean``) over the set positions of ``mask``.

    Uses the unbiased variance over all masked positions of the batch. Without ``shift_mean`` the mean is kept
    (the rewards are whitened this way, so that their sign survives). Zero off the mask.
    Example: values (1, 3) on a full mask: mean 2, unbiased variance 2, whitened (-0.7071, 0.7071); without
    ``shift_mean`` (1.2929, 2.7071).
    """
    mask = mask.bool()
    mean, var = _masked_moments(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~mask, 0.0)


def future_entropy_rewards(token_entropies: torch.Tensor, mask: torch.Tensor, entropy_coef: float) -> torch.Tensor:
    """Per-token rewards ``entropy_coef * H(pi(.|s_{t+1}))`` that complete an exact entropy bonus (PAPER 2d).

    ``token_entropies`` (N, T): the exact entropy over the vocabulary of the state at every position (position t
    chooses token t+1), from the sampling-time policy; ``mask`` (N, T) the response positions. Differentiating
    ``sum_t H(pi(.|s_t))`` directly misses that the action at t chooses the states of the later entropies (as in
    ``token_kl_surrogate``); giving action t the entropy of the next state as its reward puts
    ``sum_{t' > t} H_t'`` into its return, so that bonus plus rewards have the expected gradient of
    ``gamma * H(pi(x))``. Example: H = (0.5, 0.2, 0.9), mask (1, 1, 0), coef 0.1: (0.02, 0, 0). Detached.
    """
    mask = mask.bool()
    entropies = token_entropies.detach().masked_fill(~mask, 0.0)
    rewards = torch.zeros_like(entropies)
    rewards[:, :-1] = entropy_coef * entropies[:, 1:]
    return rewards.masked_fill(~mask, 0.0)


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016): returns ``(advantages, returns)``, each (N, T), zero off the mask.

    ``delta_t = r_t + discount * V_{t+1} - V_t`` (V = 0 after the last response token) and
    ``A_t = delta_t + discount * lam * A_{t+1}``; returns ``A_t + V_t`` are the value targets.
    Example (one row, two tokens, discount 1, lam 0.5): r = (0, 1), V = (0.5, 0.2): delta = (-0.3, 0.8),
    A = (-0.3 + 0.5 * 0.8, 0.8) = (0.1, 0.8), returns = (0.6, 1.0).
    """
    mask = mask.bool()
    values = values.masked_fill(~mask, 0.0)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + discount * next_value - values[:, t]
        advantage = (delta + discount * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        # off the mask (after the response) the episode has ended: nothing flows back from there
        next_value, next_advantage = values[:, t], advantage
    return advantages, (advantages + values).masked_fill(~mask, 0.0)


def ppo_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2
) -> ClippedLoss:
    """PPO's clipped surrogate per token: ``max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))``, ``rho = pi / pi_old``.

    Example: A = 1, rho = 1.5, eps = 0.2: max(-1.5, -1.2) = -1.2 (clipped); A = -1, rho = 1.5: max(1.5, 1.2) = 1.5
    (not clipped: a worse action made more likely is always penalised in full).
    """
    mask = mask.bool()
    log_ratio = (logps - old_logps).masked_fill(~mask, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    losses = torch.maximum(unclipped, clipped).masked_fill(~mask, 0.0)
    was_clipped = ((clipped > unclipped) & mask).float()
    approx_kl = (0.5 * log_ratio.detach() ** 2).masked_fill(~mask, 0.0)
    return ClippedLoss(losses, was_clipped.detach(), approx_kl)


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2
) -> ClippedLoss:
    """Clipped value loss per token: ``0.5 * max((V - G)^2, (V_clip - G)^2)``, ``V_clip = V_old + clip(V - V_old, +-eps)``.

    Example: V_old = 0, V = 0.5, G = 1, eps = 0.2: V_clip = 0.2, 0.5 * max(0.25, 0.64) = 0.32 (clipped).
    """
    mask = mask.bool()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    losses = (0.5 * torch.maximum(unclipped, clipped)).masked_fill(~mask, 0.0)
    return ClippedLoss(losses, ((clipped > unclipped) & mask).float().detach())
