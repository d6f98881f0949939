"""KTO (Ethayarajh et al. 2024) on a labelled file: one completion per row and a desirable/undesirable label."""

from __future__ import annotations

import torch

from lit_align.objectives import OfflineObjective


class KTO(OfflineObjective):
    """Prospect-theoretic loss on unpaired feedback.

    With ``r = ln pi(y|x) - ln pi_0(y|x)`` and the reference point ``z0`` (here the batch mean of ``r``, detached
    and clamped at 0, a simple stand-in for the paper's KL estimate on mismatched pairs), a desirable row costs
    ``w_d * (1 - s(beta * (r - z0)))`` and an undesirable one ``w_u * (1 - s(beta * (z0 - r)))``.

    Args:
        beta: Scale of the log-ratio.
        desirable_weight: w_d.
        undesirable_weight: w_u.
    """

    data_columns = {"label": bool}  # read from the data file, validated row by row, handed over as batch["label"]

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def rows_loss(self, logps, batch):
        ratio = logps.policy - logps.reference  # (B,): one row per example
        z0 = ratio.detach().mean().clamp(min=0)
        desirable = batch["label"]
        losses = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - z0))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - ratio))),
        )
        return losses, {"rewards/desirable": ratio.detach()[desirable], "rewards/undesirable": ratio.detach()[~desirable]}
