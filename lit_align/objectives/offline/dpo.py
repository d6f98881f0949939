"""DPO and IPO: the reward-model-free baselines on offline pairs (TRL's ``sigmoid`` and ``ipo``)."""

from __future__ import annotations

from lit_align.losses import PreferenceLoss, dpo_loss, ipo_loss, length_normalized_ipo_loss
from lit_align.losses.preference import FDivergence as FDivergenceType
from lit_align.objectives.offline.base import OfflinePairObjective
from lit_align.objectives.offline.pair_terms import FDivergence, check


class DPO(OfflinePairObjective):
    """Direct preference optimisation (PAPER Eq. 6), with cDPO label smoothing and TRL's f-divergences.

    Args:
        beta: Strength of the implicit KL regularisation towards the reference. TRL default: 0.1 (PAPER
            TL;DR and chat: 0.05, set by configs/tldr and configs/ultrafeedback).
        label_smoothing: Assumed probability that a preference label is flipped: conservative DPO (cDPO). 0 is
            plain DPO, the TRL default; TRL 1.16's ``sigmoid`` ignores ``label_smoothing`` (its ``robust`` loss,
            ``RobustDPO`` here, is the unbiased variant).
        f_divergence_type: The regulariser's f-divergence (Wang et al. 2023): ``reverse_kl`` (DPO, TRL's
            default), ``forward_kl``, ``js_divergence`` or ``alpha_divergence``, computed as TRL does
            (``lit_align.losses.f_divergence_scores``).
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0,
                 f_divergence_type: FDivergenceType = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                 **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        check(beta=beta, label_smoothing=label_smoothing)
        super().__init__(**kwargs)
        self.beta, self.label_smoothing, self.f_divergence = beta, label_smoothing, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta,
                        self.label_smoothing, self.f_divergence.kind, self.f_divergence.alpha)


class IPO(OfflinePairObjective):
    """Identity preference optimisation (Azar et al. 2023): squared regression of the log-ratio margin.

    Args:
        tau: Regularisation strength; the margin is regressed onto ``1 / (2 tau)``. TRL default: 0.1 (its
            ``beta`` with ``loss_type: ipo``).
        length_normalized: Divide each log-ratio by its response's length first: TRL's ``ipo``. False (the
            IPO paper's summed log-probs) is the default here; the ``rewards/*`` are ``tau`` times the summed
            log-ratios either way (TRL's).
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    def __init__(self, tau: float = 0.1, length_normalized: bool = False,
                 f_divergence_type: FDivergenceType = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                 **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        check(tau=tau)
        super().__init__(**kwargs)
        self.tau, self.length_normalized, self.f_divergence = tau, length_normalized, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        def loss(chosen, rejected):
            ratios = chosen.policy, rejected.policy, chosen.reference, rejected.reference
            if self.length_normalized:  # TRL's ipo
                return length_normalized_ipo_loss(*ratios, chosen.lengths, rejected.lengths, self.tau)
            return ipo_loss(*ratios, self.tau)

        return self.f_divergence.apply(loss, chosen, rejected, self.tau)
