"""RLOO (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline over k samples per prompt."""

from __future__ import annotations

from typing import Any

import torch

from lit_align.losses import kl_penalty, leave_one_out_baseline, normalized_advantages, returns_to_go, rloo_loss
from lit_align.objectives.onpolicy.group import GroupExperience, GroupObjective


class RLOO(GroupObjective):
    """``-(r_i - b_i) ln pi(y_i|x)`` where ``r_i = R(x, y_i) - kl_coef * sum_t (ln pi_t - ln pi_0)(y_i,t)`` is the
    KL-shaped reward of sample i and ``b_i`` the mean of the other ``k - 1`` samples' (``leave_one_out_baseline``).

    ``token_level`` keeps the KL penalty per token instead: token t of sample i is weighted by its return-to-go
    ``R(x, y_i) - kl_coef * sum_{t' >= t} KL_t'`` minus the same baseline, so a token is not blamed for the
    KL of the tokens before it. Log-probs are taken at ``sampling.temperature`` (the distribution sampled).

    Logged besides the on-policy metrics: ``rloo/advantages`` (mean absolute), ``rloo/rlhf_reward`` (the shaped
    reward), ``reward_std`` and ``frac_reward_zero_std`` over each prompt's samples.

    Args:
        kl_coef: Weight of the KL to the reference in the reward. 0 trains without a reference. TRL default: 0.05.
        token_level: Per-token KL rewards with returns-to-go instead of one sequence reward. TRL: off.
        clip_range: PPO-style clip of the importance ratio on later passes over a batch (the first pass is plain
            REINFORCE: the ratio is 1); None never clips. TRL default (``epsilon``): 0.2.
        epsilon_high: The upper clip, ``1 + epsilon_high``; None takes ``clip_range`` (TRL's default).
        normalize_advantages: Divide the advantages by their standard deviation over the batch after centring them
            (TRL's ``normalize_advantages``, default False). Over this rank's batch; TRL's over every rank's.
        num_samples: k, responses per prompt. TRL default: 2 (the paper finds k = 4 better).
        epochs_per_batch: Passes over each sampled batch. The paper: 1 (on-policy REINFORCE).
    """

    def __init__(
        self,
        kl_coef: float = 0.05,
        token_level: bool = False,
        clip_range: float | None = 0.2,
        epsilon_high: float | None = None,
        normalize_advantages: bool = False,
        num_samples: int = 2,
        epochs_per_batch: int = 1,
        **kwargs: Any,
    ) -> None:
        if clip_range is not None and clip_range <= 0:
            raise ValueError(f"clip_range must be positive or None, got {clip_range}")
        if epsilon_high is not None and epsilon_high <= 0:
            raise ValueError(f"epsilon_high must be positive or None, got {epsilon_high}")
        if normalize_advantages and token_level:
            raise ValueError("normalize_advantages scales sequence advantages (TRL's): not with token_level")
        super().__init__(kl_coef, num_samples=num_samples, epochs_per_batch=epochs_per_batch, **kwargs)
        self.kl_coef = kl_coef
        self.token_level = token_level
        self.clip_range = clip_range
        self.epsilon_high = epsilon_high
        self.normalize_advantages = normalize_advantages

    @torch.no_grad()
    def experience_from(self, rollout) -> GroupExperience:
        return self.rloo_experience(super().experience_from(rollout))

    def rloo_experience(self, exp) -> GroupExperience:
        """The KL-shaped rewards, their leave-one-out baselines and the advantages of a batch."""
        mask = exp.response_mask
        kl = torch.zeros_like(exp.old_logps)  # (N, T-1): k1 at the sampling-time weights
        if self.kl_coef > 0:
            kl = kl_penalty(exp.old_logps, exp.ref_logps) * mask
        rewards = exp.scores - self.kl_coef * kl.sum(-1)  # (N,)
        baseline = leave_one_out_baseline(rewards, self.num_samples)
        if self.token_level:
            token_returns = exp.scores[:, None] * mask + returns_to_go(-self.kl_coef * kl, mask)
            advantages = (token_returns - baseline[:, None]) * mask  # (N, T-1)
        else:
            advantages = rewards - baseline  # (N,)
        if self.normalize_advantages:
            advantages = normalized_advantages(advantages)
        return exp.extend(GroupExperience, advantages=advantages, rlhf_reward=rewards, baseline=baseline)

    def experience_loss(self, mb: GroupExperience):
        """RLOO's loss; with ``importance_correction``, the per-token terms (``token_level``) are multiplied by the
        token weights, the per-sequence terms by the sequence weights (``Experience.sequence_weights``)."""
        logps = self.policy_token_logps(mb)
        advantages, mask = mb.advantages, mb.response_mask
        if mb.importance is not None and advantages.dim() == 2:
            # a weight w >= 0 of a token's clipped term -min(rho A, clip(rho) A) is a factor of its advantage
            advantages, mask = advantages * mb.token_weights(), mb.loss_mask()
        losses = rloo_loss(logps, mb.old_logps, advantages, mask, self.clip_range, self.epsilon_high)
        if mb.importance is not None and advantages.dim() == 1:
            losses = losses * mb.sequence_weights()
        sequence_advantages = mb.rlhf_reward - mb.baseline
        return losses.mean(), {"rloo/advantages": sequence_advantages.abs(), "rloo/rlhf_reward": mb.rlhf_reward}
