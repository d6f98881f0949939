"""DPO and IPO: the reward-model-free baselines on offline pairs."""

from __future__ import annotations

from lit_align.losses import dpo_loss, ipo_loss
from lit_align.objectives.offline import OfflinePairObjective


class DPO(OfflinePairObjective):
    """Direct preference optimisation (PAPER Eq. 6), with cDPO label smoothing.

    Args:
        beta: Strength of the implicit KL regularisation towards the reference. TRL default: 0.1 (PAPER
            TL;DR and chat: 0.05, set by configs/tldr and configs/ultrafeedback).
        label_smoothing: Assumed probability that a preference label is flipped (0 is plain DPO, the TRL
            default).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, **kwargs) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        super().__init__(**kwargs)
        self.beta = beta
        self.label_smoothing = label_smoothing

    def pair_loss(self, chosen, rejected, batch):
        return dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta,
                        self.label_smoothing)


class IPO(OfflinePairObjective):
    """Identity preference optimisation (Azar et al. 2023): squared regression of the log-ratio margin.

    Args:
        tau: Regularisation strength; the margin is regressed onto ``1 / (2 tau)``. TRL default: 0.1 (its
            ``beta`` with ``loss_type: ipo``).
    """

    def __init__(self, tau: float = 0.1, **kwargs) -> None:
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        super().__init__(**kwargs)
        self.tau = tau

    def pair_loss(self, chosen, rejected, batch):
        return ipo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.tau)
