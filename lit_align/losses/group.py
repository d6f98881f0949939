"""Losses of groups of responses sampled for one prompt: RLOO's leave-one-out REINFORCE and GRPO's clipped,
group-normalised policy gradient (and its Dr. GRPO, DAPO and BNPO reductions).

Rewards are (N,) with the ``k`` samples of a prompt in consecutive rows (row ``i * k + j`` is sample j of prompt
i); per-token tensors are (N, T) aligned like ``lit_align.logprobs.completion_token_logprobs`` with a bool response
``mask``. Functions return per-example (or per-token) values; the objective reduces them.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from lit_align.losses.rl import kl_penalty

RewardScale = Literal["group", "batch", "none"]
GroupLossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]


def leave_one_out_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's baseline (Ahmadian et al. 2024, Eq. 5): each sample's baseline is the mean reward of the *other*
    ``k - 1`` samples of its prompt, ``b_i = (sum_j r_j - r_i) / (k - 1)`` (N,).

    Example: one group of rewards [1, 2, 6]: baselines [4, 3.5, 1.5].
    """
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples per prompt, got {group_size}")
    groups = rewards.reshape(-1, group_size)  # (prompts, k)
    return ((groups.sum(-1, keepdim=True) - groups) / (group_size - 1)).reshape(rewards.shape)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``r_i - b_i`` with the leave-one-out baseline (N,): ``k / (k - 1) * (r_i - mean(r))``, so they sum to 0 over
    each group. Example: [1, 2, 6] -> [-3, -1.5, 4.5]."""
    return rewards - leave_one_out_baseline(rewards, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: RewardScale = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, Sec. 4.1.2): the reward minus its group's mean, divided by the group's
    standard deviation (``group``, the paper), the whole batch's (``batch``) or nothing (``none``, Dr. GRPO: Liu
    et al. 2025 show the division favours prompts whose rewards barely vary). Sums to 0 over every group.

    Example: one group [1, 2, 6], ``scale="none"``: [-2, -1, 3]; ``group``: std (unbiased) = sqrt(7) = 2.6458, so
    [-0.7559, -0.3780, 1.1339] (up to ``eps``).
    """
    groups = rewards.reshape(-1, group_size).float()  # (prompts, k)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale == "group":
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (groups.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return centred.reshape(rewards.shape)


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``G_t = sum_{t' >= t} r_t'`` over the response tokens of each row (N, T), zero off ``mask``.

    Example: rewards [1, 2, 3] on a full mask: [6, 5, 3].
    """
    rewards = token_rewards * mask
    return (rewards + rewards.sum(-1, keepdim=True) - rewards.cumsum(-1)) * mask


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_range: float | None = 0.2) -> torch.Tensor:
    """REINFORCE with RLOO's advantages (Ahmadian et al. 2024, Eq. 6), per sequence (N,).

    Sequence level (``advantages`` (N,)): ``-A * rho`` with the sequence ratio ``rho = pi(y|x) / pi_t(y|x)``
    (``exp`` of the summed per-token differences); at the sampling weights ``rho = 1`` and the gradient is the
    paper's ``-A * grad ln pi(y|x)``. Token level (``advantages`` (N, T), e.g. returns-to-go of per-token
    KL-shaped rewards minus the baseline): ``-sum_t A_t * rho_t`` with per-token ratios. Later passes over the
    same samples clip the ratio to ``[1 - clip_range, 1 + clip_range]`` PPO-style (``None``: never clipped).

    Example (sequence level): ln pi = ln pi_t, A = [2, -1]: losses [-2, 1] (the values at rho = 1).
    """
    def clipped(ratio, adv):
        if clip_range is None:
            return -ratio * adv
        return -torch.minimum(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)

    if advantages.dim() == 1:
        ratio = ((logps - old_logps) * mask).sum(-1).exp()  # (N,)
        return clipped(ratio, advantages)
    ratio = ((logps - old_logps) * mask).exp()  # (N, T)
    return (clipped(ratio, advantages) * mask).sum(-1)


class GroupTokenLoss(NamedTuple):
    """Per-token GRPO loss (N, T) and detached diagnostics: the low/high clipped regions and the k3 KL (or None)."""

    losses: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    kl: torch.Tensor | None = None


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
) -> GroupTokenLoss:
    """GRPO's per-token objective (Shao et al. 2024, Eq. 3), negated:

        ``-min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t``

    with ``rho_t = pi(a_t) / pi_t(a_t)``, one advantage ``A`` per sequence (N,), and the KL estimator
    ``k3_t = pi_0/pi - ln(pi_0/pi) - 1`` (``kl_penalty(..., "k3")``) when ``beta > 0``. ``eps_high > eps_low`` is
    DAPO's clip-higher (Yu et al. 2025): more room for unlikely tokens to grow.

    Example: rho = 1.5, A = 1, eps = 0.2: ``-min(1.5, 1.2) = -1.2`` (clipped high); rho = 0.5, A = -1:
    ``-min(-0.5, -0.8) = 0.8`` (clipped low). ln pi = -1, ln pi_0 = -2: k3 = e^-1 - 1 + 1 = 0.3679.
    """
    ratio = (logps - old_logps).exp()
    adv = advantages.reshape(-1, 1)
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    losses = -torch.minimum(ratio * adv, clipped_ratio * adv)
    kl = None
    if beta > 0:
        if ref_logps is None:
            raise ValueError("a KL term (beta > 0) needs the reference's log-probs")
        kl = kl_penalty(logps, ref_logps, "k3")
        losses = losses + beta * kl
        kl = (kl * mask).detach()
    clipped_low = ((ratio < 1 - epsilon_low) & (adv < 0) & mask).detach()
    clipped_high = ((ratio > 1 + epsilon_high) & (adv > 0) & mask).detach()
    return GroupTokenLoss(losses * mask, clipped_low, clipped_high, kl)


def reduce_group_loss(losses: torch.Tensor, mask: torch.Tensor, loss_type: GroupLossType,
                      max_completion_length: int | None = None, num_tokens: float | torch.Tensor | None = None
                      ) -> torch.Tensor:
    """The scalar loss of per-token ``losses`` (N, T), each variant its normaliser:

    - ``grpo``: the mean over each sequence's tokens, then over sequences (the paper: long responses weigh less
      per token);
    - ``dr_grpo``: the sum over every token divided by the constant ``N * max_completion_length`` (Liu et al.
      2025: no length bias);
    - ``dapo``: the sum divided by ``num_tokens``, the token count of the whole batch the update averages over
      (Yu et al. 2025: every token weighs the same in the batch; the caller counts over every rank);
    - ``bnpo``: the sum divided by this batch's own token count.

    Example: losses [[1, 3], [2, 0]] with mask [[1, 1], [1, 0]]: grpo (2 + 2)/2 = 2; dapo/bnpo 6/3 = 2;
    dr_grpo with max length 4: 6/8 = 0.75.
    """
    total = (losses * mask).sum()
    if loss_type == "grpo":
        return ((losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo divides by N * max_completion_length: give max_completion_length")
        return total / (losses.shape[0] * max_completion_length)
    if loss_type == "dapo":
        return total / (mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)).clamp(min=1)
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1)
    raise ValueError(f"loss_type must be grpo, dr_grpo, dapo or bnpo, got {loss_type!r}")
