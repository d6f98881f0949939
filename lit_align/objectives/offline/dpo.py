"""DPO and IPO: the reward-model-free baselines on offline pairs (the ``sigmoid`` and ``ipo`` terms of
``pair_terms.PAIR_LOSSES``, whose checks their settings share)."""

from __future__ import annotations

from lit_align.losses.preference import FDivergence
from lit_align.objectives.offline.pair_terms import PairTermObjective, check_settings


class DPO(PairTermObjective):
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

    term = "sigmoid"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, label_smoothing=label_smoothing,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)
        self.beta = beta
        self.label_smoothing = label_smoothing


class IPO(PairTermObjective):
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

    term = "ipo"

    def __init__(self, tau: float = 0.1, length_normalized: bool = False, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(tau=tau, length_normalized=length_normalized,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)
        self.tau = tau
