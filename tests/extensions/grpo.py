"""GRPO (Shao et al. 2024) without a reference model: group-normalised rewards and a clipped ratio."""

from __future__ import annotations

import torch
from torch import nn

from lit_align.models.logprobs import masked_mean
from lit_align.objectives import OnPolicyObjective


class GRPO(OnPolicyObjective):
    """``num_samples`` responses per prompt; each one's advantage is its reward standardised within its group.

    Args:
        clip_range: PPO-style clip of the importance ratio.
    """

    needs_reference = None  # reference-free: no pi_0 is loaded and no reference forward runs

    def __init__(self, clip_range: float = 0.2, **kwargs) -> None:
        kwargs.setdefault("num_samples", 4)
        super().__init__(**kwargs)
        self.clip_range = clip_range

    def experience_loss(self, mb):
        groups = mb.scores.view(-1, self.num_samples)  # rows are laid out prompt-major
        advantages = ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-4)).view(-1, 1)
        logps = self.policy_token_logps(mb)
        ratio = (logps - mb.old_logps).exp()
        clipped = ratio.clamp(1 - self.clip_range, 1 + self.clip_range)
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
        loss = masked_mean(per_token, mb.response_mask)
        return loss, {"grpo/advantage_abs": advantages.abs().squeeze(-1)}


class TokenCountReward(nn.Module):
    """A rule-based reward, as a user would write one: how often ``token_id`` occurs in the sequence."""

    def __init__(self, token_id: int = 10) -> None:
        super().__init__()
        self.token_id = token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ((input_ids == self.token_id) & attention_mask.bool()).float().sum(-1)
