"""The shared base of RLOO and GRPO: ``num_samples`` responses per prompt whose rewards are compared within their
group, and a reference that is loaded only when a KL weight asks for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lit_align.objectives.onpolicy.base import OnPolicyObjective
from lit_align.objectives.onpolicy.experience import Experience


@dataclass(kw_only=True)
class GroupExperience(Experience):
    """What a group objective adds to the experience.

    Attributes:
        advantages: (N,) one advantage per response, or (N, T-1) per token (RLOO's ``token_level``).
        token_mask: (N, T-1) bool, the tokens that carry the policy term (GRPO's ``top_entropy_quantile``); None
            keeps every response token.
        rlhf_reward: (N,) the KL-shaped reward (RLOO); None where the objective has none.
        baseline: (N,) the leave-one-out baseline of ``rlhf_reward`` (RLOO); None where the objective has none.
    """

    advantages: torch.Tensor
    token_mask: torch.Tensor | None = None
    rlhf_reward: torch.Tensor | None = None
    baseline: torch.Tensor | None = None


class GroupObjective(OnPolicyObjective):
    """A group of ``num_samples >= 2`` responses per prompt (rows ``i * k .. i * k + k - 1``); a subclass adds its
    advantages to the experience and implements ``experience_loss``.

    The reference follows the KL weight (``kl_weight`` given by the subclass): with a weight of 0 the objective
    is reference-free (no pi_0 is loaded when no ``policy`` is given) and with a positive weight it needs a live
    one (``copy`` or ``lora``): ``reference_need``.
    """

    @classmethod
    def reference_need(cls, settings):
        return "samples" if settings["kl_weight"] > 0 else None

    @classmethod
    def reference_owner(cls, settings):
        return f"{cls.__name__} with a KL weight above 0"

    def __init__(self, kl_weight: float, **kwargs: Any) -> None:
        if kl_weight < 0:
            raise ValueError(f"the KL weight must be non-negative, got {kl_weight}")
        if kwargs.setdefault("num_samples", 4) < 2:
            raise ValueError(f"{type(self).__name__} compares the responses to a prompt: num_samples must be >= 2")
        super().__init__(**kwargs)
        self.sampling.require_distribution(type(self).__name__)  # ratios of greedy samples are undefined

    def groups(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row values (N, ...) as (prompts, k, ...)."""
        return values.reshape(-1, self.num_samples, *values.shape[1:])

    def experience_metrics(self, exp: Experience) -> dict[str, torch.Tensor]:
        metrics = super().experience_metrics(exp)
        std = self.groups(exp.scores).std(-1)  # (prompts,)
        metrics["reward_std"] = std
        metrics["frac_reward_zero_std"] = (std < 1e-6).float()  # groups that carry no signal
        return metrics
