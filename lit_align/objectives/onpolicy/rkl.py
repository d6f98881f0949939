"""Reverse-KL minimisation (PAPER Eqs. 14-15): RLHF with an entropy term, optimised with the same PPO."""

from __future__ import annotations

from typing import Literal

import torch

from lit_align.models.chunked_head import CompletionScores
from lit_align.models.logprobs import masked_mean
from lit_align.losses import future_entropy_rewards
from lit_align.objectives.onpolicy.rlhf import RLHF, PPOExperience


class ReverseKL(RLHF):
    """Minimises ``-E R - gamma H(pi) + beta KL(pi || pi_0)``, whose optimum is
    ``pi ∝ pi_0^(beta/(beta+gamma)) exp(R/(beta+gamma))``: the prior is flattened (PAPER 2d). ``kl_coef`` is beta;
    with ``entropy_coef = 0`` this is exactly ``RLHF``. As there, every log-prob and entropy is of the tempered
    policy pi_T that ``sampling`` draws from.

    Args:
        entropy_coef: gamma, the weight of the entropy. PAPER TL;DR: 0.01.
        entropy_mode: ``reward`` (PAPER 2d default): a per-token reward ``-gamma * ln pi_old(a_t|s_t)`` next to
            the KL penalty, whose expectation is gamma times the entropy of the response. ``bonus``: the exact
            per-token entropy over the vocabulary instead (lower variance): ``gamma * sum_t H(pi(.|s_t))`` is
            subtracted from the PPO loss, multiplied by the same factor as the whitened advantages so that its
            weight against the reward stays gamma, and each token gets the entropy of the state it leads to as a
            reward (the state-distribution part of the entropy's gradient, as ``token_kl_surrogate`` for the KL).
            Both modes have the same optimum.
    """

    def __init__(self, entropy_coef: float = 0.01, entropy_mode: Literal["reward", "bonus"] = "reward", **kwargs) -> None:
        if entropy_coef < 0:
            raise ValueError(f"entropy_coef must be non-negative, got {entropy_coef}")
        if entropy_mode not in ("reward", "bonus"):
            raise ValueError(f"entropy_mode must be reward or bonus, got {entropy_mode!r}")
        super().__init__(**kwargs)
        self.entropy_coef = entropy_coef
        self.entropy_mode = entropy_mode

    @property
    def entropy_reward_coef(self) -> float:
        return self.entropy_coef if self.entropy_mode == "reward" else 0.0

    @property
    def _bonus(self) -> bool:
        return self.entropy_mode == "bonus" and self.entropy_coef > 0

    @property
    def needs_entropy(self) -> bool:
        return self._bonus

    def extra_token_rewards(self, scores: CompletionScores, response_mask: torch.Tensor) -> torch.Tensor | None:
        if not self._bonus:
            return None
        # (n, T-1): H of pi_old at each response state, at the sampling temperature
        return future_entropy_rewards(scores.entropy, response_mask, self.entropy_coef)

    def extra_loss(self, scores: CompletionScores, mb: PPOExperience):
        if not self._bonus:
            return 0.0, {}
        # token-weighted mean over the mini-batch, like the policy loss it is added to
        entropy = masked_mean(scores.entropy, mb.response_mask)
        scale = mb.advantage_scale[0]  # the whitening factor of this batch's advantages
        return -self.entropy_coef * scale * entropy, {"policy/entropy": entropy.detach()}
