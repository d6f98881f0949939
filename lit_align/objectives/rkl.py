"""Reverse-KL minimisation (PAPER Eqs. 14-15): RLHF with an entropy term, optimised with the same PPO."""

from __future__ import annotations

from typing import Literal

import torch

from lit_align.logprobs import masked_mean, token_entropy
from lit_align.objectives.onpolicy import Experience
from lit_align.objectives.ppo import RLHF


class ReverseKL(RLHF):
    """Minimises ``-E R - gamma H(pi) + beta KL(pi || pi_0)``, whose optimum is
    ``pi ∝ pi_0^(beta/(beta+gamma)) exp(R/(beta+gamma))``: the prior is flattened (PAPER 2d). ``kl_coef`` is beta;
    with ``entropy_coef = 0`` this is exactly ``RLHF``.

    Args:
        entropy_coef: gamma, the weight of the entropy (PAPER TL;DR: 0.01).
        entropy_mode: ``reward`` (default): a per-token reward ``-gamma * ln pi_old(a_t|s_t)`` next to the KL
            penalty, whose expectation is gamma times the entropy of the response; ``bonus``: subtract
            ``gamma`` times the exact per-token entropy (over the vocabulary, token-weighted mean) from the PPO
            loss instead.
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

    def extra_loss(self, logits: torch.Tensor, mb: Experience):
        if self.entropy_mode != "bonus" or self.entropy_coef == 0:
            return 0.0, {}
        entropy = masked_mean(token_entropy(logits[:, :-1]), mb["response_mask"])  # exact, per response token
        return -self.entropy_coef * entropy, {"policy/entropy": entropy.detach()}
