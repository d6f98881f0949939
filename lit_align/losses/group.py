"""Losses of groups of responses sampled for one prompt: RLOO's leave-one-out REINFORCE and GRPO's clipped,
group-normalised policy gradient (and its Dr. GRPO, DAPO and BNPO reductions).

Rewards are (N,) with the ``k`` samples of a prompt in consecutive rows (row ``i * k + j`` is sample j of prompt
i); per-token tensors are (N, T) aligned like ``lit_align.models.logprobs.completion_token_logprobs`` with a bool response
``mask``. Functions return per-example (or per-token) values; the objective reduces them.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch

from lit_align.losses.rl import kl_penalty

RewardScale = Literal["group", "batch", "none"]
GroupLossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
#: Every ``GroupLossType``, for checks and messages.
GROUP_LOSS_TYPES: tuple[str, ...] = get_args(GroupLossType)


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


def normalized_advantages(advantages: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(A - mean(A)) / (std(A) + eps)`` over the whole batch, the unbiased standard deviation (TRL's RLOO
    ``normalize_advantages``). Example: [-3, -1.5, 4.5]: mean 0, std 3.9686, so [-0.7559, -0.3780, 1.1339]."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: RewardScale = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, Sec. 4.1.2): the reward minus its group's mean, divided by the group's
    standard deviation (``group``, the paper), the whole batch's (``batch``) or nothing (``none``, Dr. GRPO: Liu
    et al. 2025 show the division favours prompts whose rewards barely vary). Sums to 0 over every group.

    Example: one group [1, 2, 6], ``scale="none"``: [-2, -1, 3]; ``group``: std (unbiased) = sqrt(7) = 2.6458, so
    [-0.7559, -0.3780, 1.1339] (up to ``eps``).
    """
    groups = rewards.reshape(-1, group_size)  # (prompts, k)
    groups = groups.to(torch.promote_types(groups.dtype, torch.float32))
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
              clip_range: float | None = 0.2, clip_high: float | None = None) -> torch.Tensor:
    """REINFORCE with RLOO's advantages (Ahmadian et al. 2024, Eq. 6), per sequence (N,).

    Sequence level (``advantages`` (N,)): ``-A * rho`` with the sequence ratio ``rho = pi(y|x) / pi_t(y|x)``
    (``exp`` of the summed per-token differences); at the sampling weights ``rho = 1`` and the gradient is the
    paper's ``-A * grad ln pi(y|x)``. Token level (``advantages`` (N, T), e.g. returns-to-go of per-token
    KL-shaped rewards minus the baseline): ``-sum_t A_t * rho_t`` with per-token ratios. Later passes over the
    same samples clip the ratio to ``[1 - clip_range, 1 + clip_high]`` PPO-style (``clip_high`` None: ``clip_range``;
    ``clip_range`` None: never clipped). TRL's ``RLOOTrainer`` clips on every pass: at the sampling weights
    (``rho = 1``) the clip changes neither value nor gradient, so the two agree.

    Example (sequence level): ln pi = ln pi_t, A = [2, -1]: losses [-2, 1] (the values at rho = 1).
    """
    def clipped(ratio, adv):
        if clip_range is None:
            return -ratio * adv
        high = clip_range if clip_high is None else clip_high
        return -torch.minimum(ratio * adv, ratio.clamp(1 - clip_range, 1 + high) * adv)

    if advantages.dim() == 1:
        ratio = ((logps - old_logps) * mask).sum(-1).exp()  # (N,)
        return clipped(ratio, advantages)
    ratio = ((logps - old_logps) * mask).exp()  # (N, T)
    return (clipped(ratio, advantages) * mask).sum(-1)


class GroupTokenLoss(NamedTuple):
    """Per-token GRPO loss (N, T) and detached diagnostics: the clipped regions (N, T) (with sequence-level ratios
    one flag per sequence, repeated over its tokens), the k3 KL as added to the loss (or None), and the weight
    ``cispo`` and ``vespo`` put on each token (or None)."""

    losses: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    kl: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def sequence_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level log-ratio (Zheng et al. 2025): the mean over the response's tokens of
    ``ln pi - ln pi_t``, (N, 1). Example: token log-ratios (0.2, 0.4) on a full mask: 0.3."""
    return (((logps - old_logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)


def vespo_weights(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                  shapes: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0)) -> torch.Tensor:
    """VESPO's detached gamma weight of each sequence (N, 1): ``phi(w) = e^lam w^k e^(-lam w)`` (``phi(1) = 1``)
    of the sequence ratio ``w = exp(sum_t ln pi/pi_t)`` (log clamped to [ln 1e-8, 20]), with
    ``(k, lam) = shapes[:2]`` for ``A >= 0`` and ``shapes[2:]`` otherwise (TRL's ``vespo_*`` defaults).
    Example: w = 1: phi = 1 for either sign."""
    low = math.log(1e-8)
    log_w = ((log_ratio.detach().clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)).clamp(low, 20.0)
    k_pos, lam_pos, k_neg, lam_neg = shapes
    positive = advantages >= 0
    k = torch.where(positive, k_pos, k_neg).to(log_w.dtype)
    lam = torch.where(positive, lam_pos, lam_neg).to(log_w.dtype).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    loss_type: GroupLossType = "dapo",
    sequence_level: bool = False,
    delta: float | None = None,
    bias_corrected_kl: bool = True,
    sapo_temperatures: tuple[float, float] = (1.0, 1.05),
    vespo_shapes: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0),
    token_mask: torch.Tensor | None = None,
) -> GroupTokenLoss:
    """GRPO's per-token objective (Shao et al. 2024, Eq. 3), negated, and its variants by ``loss_type``:

        ``-min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t``   (grpo, dr_grpo, dapo, bnpo, luspo)

    with ``rho_t = pi(a_t) / pi_t(a_t)``, one advantage ``A`` per sequence (N,), and the KL estimator
    ``k3_t = pi_0/pi - ln(pi_0/pi) - 1`` (``kl_penalty(..., "k3")``) when ``beta > 0``, multiplied by ``rho_t``
    with ``bias_corrected_kl`` (TRL's default: the estimate is of KL(pi || pi_0) although the tokens were drawn
    from pi_t). ``eps_high > eps_low`` is DAPO's clip-higher (Yu et al. 2025). The other variants:

    - ``delta``: two-sided clipping (INTELLECT-2): ``rho_t`` in the unclipped branch capped at ``delta``.
    - ``sequence_level`` (GSPO, Zheng et al. 2025): one ratio per sequence, ``exp`` of the mean token log-ratio.
    - ``cispo`` (MiniMax-M1): ``-sg(min(rho_t, eps_high)) A ln pi(a_t)``: the weight is capped, not the update
      (``eps_high`` is then the cap itself, e.g. 5).
    - ``sapo`` (Soft Adaptive PO): ``-4/tau s(tau (rho_t - 1)) A`` with ``tau`` = ``sapo_temperatures[0]`` for
      ``A > 0`` and ``[1]`` otherwise: a smooth gate instead of the clip.
    - ``vespo``: ``-sg(phi(w)) A ln pi(a_t)`` with VESPO's gamma weight of the sequence ratio (``vespo_weights``).

    ``token_mask`` (N, T): the tokens that carry the policy term (e.g. the high-entropy ones,
    ``entropy_token_mask``); the KL term stays on every response token, as in TRL.

    Example: rho = 1.5, A = 1, eps = 0.2: ``-min(1.5, 1.2) = -1.2`` (clipped high); rho = 0.5, A = -1:
    ``-min(-0.5, -0.8) = 0.8`` (clipped low). ln pi = -1, ln pi_0 = -2: k3 = e^-1 - 1 + 1 = 0.3679 (at rho = 1
    the bias correction changes nothing). cispo with rho = 2, eps_high = 1.5, A = 1, ln pi = -1: value -1.5 * -1
    = 1.5, gradient -1.5 in ln pi. sapo at rho = 1, tau = 1, A = 1: -4 * 0.5 = -2, gradient -1 in rho.
    """
    adv = advantages.reshape(-1, 1)
    log_ratio = logps - old_logps
    ratio = (sequence_log_ratio(logps, old_logps, mask) if sequence_level else log_ratio).exp()  # (N, T) or (N, 1)
    weights = None
    if loss_type == "cispo":
        weights = ratio.clamp(max=epsilon_high).detach()
        losses = -weights * adv * logps
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, sapo_temperatures[0], sapo_temperatures[1]).to(ratio.dtype)
        losses = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    elif loss_type == "vespo":
        weights = vespo_weights(log_ratio, mask, adv, vespo_shapes)
        losses = -weights * adv * logps
    else:
        clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
        capped = ratio if delta is None else ratio.clamp(max=delta)
        losses = -torch.minimum(capped * adv, clipped_ratio * adv)
    losses = losses.expand_as(logps)
    if token_mask is not None:
        losses = losses * token_mask
    kl = None
    if beta > 0:
        if ref_logps is None:
            raise ValueError("a KL term (beta > 0) needs the reference's log-probs")
        kl = kl_penalty(logps, ref_logps, "k3")
        if bias_corrected_kl:
            kl = kl * ratio
        losses = losses + beta * kl
        kl = (kl * mask).detach()
    high = epsilon_high if loss_type == "cispo" else 1 + epsilon_high
    clipped_low = ((ratio < 1 - epsilon_low) & (adv < 0)).expand_as(mask) & mask
    clipped_high = ((ratio > high) & (adv > 0)).expand_as(mask) & mask
    if loss_type in ("sapo", "vespo"):
        clipped_low = clipped_high = torch.zeros_like(mask)
    elif loss_type == "cispo":
        clipped_low = torch.zeros_like(mask)
    return GroupTokenLoss(losses * mask, clipped_low.detach(), clipped_high.detach(), kl,
                          None if weights is None else weights.expand_as(logps) * mask)


def entropy_token_mask(entropies: torch.Tensor, mask: torch.Tensor, top_quantile: float) -> torch.Tensor:
    """The response tokens whose entropy is at least the ``1 - top_quantile`` quantile of the batch's response-token
    entropies (Wang et al. 2025, "Beyond the 80/20 rule"; TRL's ``top_entropy_quantile``), (N, T) bool.

    Example: entropies (0.1, 0.5, 0.9, 0.3) on a full mask, top_quantile 0.5: threshold = the median 0.4 (linear
    interpolation), mask (0, 1, 1, 0).
    """
    values = entropies[mask.bool()].float()
    if values.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    threshold = torch.quantile(values, 1 - top_quantile)
    return (entropies * mask >= threshold) & mask.bool()


def reduce_group_loss(losses: torch.Tensor, mask: torch.Tensor, loss_type: GroupLossType,
                      max_completion_length: int | None = None, num_tokens: float | torch.Tensor | None = None
                      ) -> torch.Tensor:
    """The scalar loss of per-token ``losses`` (N, T), each variant its normaliser:

    - ``grpo``, ``sapo``: the mean over each sequence's tokens, then over sequences (the paper: long responses weigh
      less per token);
    - ``dr_grpo``: the sum over every token divided by the constant ``N * max_completion_length`` (Liu et al.
      2025: no length bias);
    - ``dapo``, ``cispo``, ``vespo``: the sum divided by ``num_tokens``, the token count of the whole batch the update
      averages over (Yu et al. 2025: every token weighs the same in the batch; the caller counts over every rank);
    - ``bnpo``: the sum divided by this batch's own token count;
    - ``luspo``: the sum over each sequence's tokens, then the mean over sequences (LUSPO: a sequence weighs by its
      length).

    Example: losses [[1, 3], [2, 0]] with mask [[1, 1], [1, 0]]: grpo (2 + 2)/2 = 2; dapo/bnpo 6/3 = 2;
    dr_grpo with max length 4: 6/8 = 0.75; luspo (4 + 2)/2 = 3.
    """
    total = (losses * mask).sum()
    if loss_type in ("grpo", "sapo"):
        return ((losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo divides by N * max_completion_length: give max_completion_length")
        return total / (losses.shape[0] * max_completion_length)
    if loss_type in ("dapo", "cispo", "vespo"):
        return total / (mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)).clamp(min=1)
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1)
    if loss_type == "luspo":
        return (losses * mask).sum(-1).mean()
    raise ValueError(f"loss_type must be one of {', '.join(GROUP_LOSS_TYPES)}, got {loss_type!r}")

