"""GRPO (Shao et al. 2024) and its reductions: Dr. GRPO (Liu et al. 2025), DAPO (Yu et al. 2025) and BNPO."""

from __future__ import annotations

from typing import Any

import torch

from lit_align.losses import GroupLossType, RewardScale, group_advantages, grpo_token_losses, reduce_group_loss
from lit_align.objectives.group import GroupObjective
from lit_align.objectives.onpolicy import Experience


class GRPO(GroupObjective):
    """Group relative policy optimisation: each response's advantage is its reward relative to the other responses
    to its prompt (``group_advantages``), every token of it gets that advantage in a PPO-clipped ratio, and with
    ``beta > 0`` a k3 estimate of KL(pi || pi_0) is added per token (``grpo_token_losses``).

    ``loss_type`` picks how the per-token losses are averaged (``reduce_group_loss``): ``grpo`` per sequence then
    over sequences, ``dr_grpo`` over a constant ``N * sampling.max_new_tokens``, ``dapo`` over the mini-batch's
    tokens on every rank, ``bnpo`` over this rank's tokens. Dr. GRPO also drops the division by the group's
    standard deviation: ``scale_rewards`` follows ``loss_type`` unless given.

    Logged besides the on-policy metrics: ``reward_std``, ``frac_reward_zero_std``, ``clip_ratio/low_mean``,
    ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (fractions of response tokens) and, with ``beta > 0``,
    ``kl`` (the mean k3 per token).

    Args:
        beta: Weight of the per-token k3 KL to the reference. 0 (TRL's default) trains without a reference.
        loss_type: ``grpo``, ``dr_grpo``, ``dapo`` or ``bnpo``. TRL default: dapo.
        epsilon_low: Lower clip of the ratio, ``1 - epsilon_low``. TRL default: 0.2.
        epsilon_high: Upper clip, ``1 + epsilon_high``; None takes ``epsilon_low``. DAPO's clip-higher: 0.28.
        scale_rewards: Divide the centred rewards by the standard deviation of their ``group``, of the ``batch``, or
            ``none``. None: ``none`` for dr_grpo, else ``group`` (TRL's default).
        num_samples: Responses per prompt (the group). TRL default: 8.
        epochs_per_batch: Passes over each sampled batch (TRL's num_iterations). TRL default: 1.
    """

    def __init__(
        self,
        beta: float = 0.0,
        loss_type: GroupLossType = "dapo",
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: RewardScale | None = None,
        num_samples: int = 8,
        epochs_per_batch: int = 1,
        **kwargs: Any,
    ) -> None:
        if loss_type not in ("grpo", "dr_grpo", "dapo", "bnpo"):
            raise ValueError(f"loss_type must be grpo, dr_grpo, dapo or bnpo, got {loss_type!r}")
        epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
        if epsilon_low <= 0 or epsilon_high <= 0:
            raise ValueError(f"epsilon_low and epsilon_high must be positive, got {epsilon_low}, {epsilon_high}")
        if scale_rewards is None:
            scale_rewards = "none" if loss_type == "dr_grpo" else "group"
        if scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
        super().__init__(beta, num_samples=num_samples, epochs_per_batch=epochs_per_batch, **kwargs)
        self.beta = beta
        self.loss_type = loss_type
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_high
        self.scale_rewards = scale_rewards

    @torch.no_grad()
    def make_experience(self, batch: dict[str, torch.Tensor]) -> Experience:
        exp = super().make_experience(batch)
        exp["advantages"] = group_advantages(exp["scores"], self.num_samples, self.scale_rewards)  # (N,)
        return exp

    def experience_loss(self, mb: Experience):
        mask = mb["response_mask"]
        out = grpo_token_losses(self.policy_token_logps(mb), mb["old_logps"], mb["advantages"], mask,
                                self.epsilon_low, self.epsilon_high, mb.get("ref_logps"), self.beta)
        num_tokens = None
        if self.loss_type == "dapo" and self._trainer is not None and self.trainer.world_size > 1:
            # the token mean of the whole update: every rank's gradient is averaged, so divide by the mean count
            num_tokens = self.trainer.strategy.reduce(mask.sum().float(), reduce_op="mean")
        loss = reduce_group_loss(out.losses, mask, self.loss_type, self.sampling.max_new_tokens, num_tokens)
        tokens = mask.sum().clamp(min=1)
        metrics = {
            "clip_ratio/low_mean": out.clipped_low.sum() / tokens,
            "clip_ratio/high_mean": out.clipped_high.sum() / tokens,
            "clip_ratio/region_mean": (out.clipped_low | out.clipped_high).sum() / tokens,
        }
        if out.kl is not None:
            metrics["kl"] = out.kl.sum() / tokens
        return loss, metrics
