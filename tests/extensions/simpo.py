"""SimPO (Meng et al. 2024): a reference-free, length-normalised pairwise loss, as one hook on the rows."""

from __future__ import annotations

import torch.nn.functional as F

from lit_align.losses import PreferenceLoss
from lit_align.objectives import OfflinePairObjective


class SimPO(OfflinePairObjective):
    """``-ln s(beta * (mean ln pi(chosen) - mean ln pi(rejected)) - gamma)``, means over each response's tokens.

    Args:
        beta: Scale of the length-normalised log-likelihood reward.
        gamma: Target reward margin.
    """

    needs_reference = None  # no reference term: none is loaded and no reference forward runs

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = beta
        self.gamma = gamma

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        chosen_rewards = self.beta * chosen.policy / chosen.lengths.clamp(min=1)
        rejected_rewards = self.beta * rejected.policy / rejected.lengths.clamp(min=1)
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards - self.gamma)
        return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())
