"""A new pairwise loss as a pure function of summed log-probs (in the library: lit_align/losses/pairwise.py)."""

import torch
import torch.nn.functional as F

from lit_align.losses import PreferenceLoss


def margin_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, beta: float = 0.1, margin: float = 1.0) -> PreferenceLoss:
    """DPO asked for a margin: ``-ln s(beta * h - margin)``, ``h`` the difference of the log-ratios (B,).

    ``margin = 0`` is DPO; the rewards are ``beta`` times each response's log-ratio, as DPO's.
    """
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen - rejected - margin)
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())
