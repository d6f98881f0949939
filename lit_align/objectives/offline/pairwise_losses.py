"""TRL's offline pairwise ``loss_type``s of summed log-probs against a reference, one thin objective each.

Each class takes its settings and implements ``pair_loss`` as one call into ``lit_align/losses/pairwise.py``,
where the maths is. Defaults are TRL's ``DPOConfig`` (``beta: 0.1``) unless a paper gives its own. TRL's
``ld_alpha`` applies to any of them as a part of ``CombinedPairLoss``.
The length-aware losses (SimPO, ORPO, length-normalised and length-desensitised DPO, WPO, RPO) are in
``pairwise_length.py``.
"""

from __future__ import annotations

import torch

from lit_align import losses as L
from lit_align.losses import PreferenceLoss
from lit_align.losses.preference import FDivergence as FDivergenceType
from lit_align.objectives.offline.base import OfflinePairObjective
from lit_align.objectives.offline.pair_terms import FDivergence, RunningRewardMean, check, in_range


def _ratios(chosen, rejected):
    """The four summed log-probs a loss of ``lit_align.losses.pairwise`` takes first."""
    return chosen.policy, rejected.policy, chosen.reference, rejected.reference


class Hinge(OfflinePairObjective):
    """Hinge loss on the DPO margin (SLiC, Zhao et al. 2023; RSO, Liu et al. 2023): ``max(0, 1 - beta h)``.

    Args:
        beta: Inverse margin: the loss stops pushing once the margin ``h`` reaches ``1 / beta``. TRL default 0.1.
        reference_free: Drop the reference (SLiC's own calibration loss, on the policy's log-prob margin):
            none is loaded. TRL's ``hinge`` uses the reference (False).
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    @classmethod
    def reference_need(cls, settings):
        return None if settings["reference_free"] else "data"

    def __init__(self, beta: float = 0.1, reference_free: bool = False,
                 f_divergence_type: FDivergenceType = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                 **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        check(beta=beta)
        super().__init__(**kwargs)
        self.beta, self.f_divergence = beta, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return self.f_divergence.apply(lambda c, r: L.hinge_loss(*_ratios(c, r), self.beta), chosen, rejected,
                                       self.beta)


class RobustDPO(OfflinePairObjective):
    """Robust DPO (Chowdhury et al. 2024): DPO corrected to be unbiased under labels flipped at rate ``eps``.

    Args:
        beta: KL regularisation strength, as in DPO. TRL default 0.1.
        label_smoothing: The assumed label-flip rate ``eps`` in [0, 0.5). TRL's default 0 reduces the loss to
            DPO; 0.1 here assumes one label in ten is wrong.
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1,
                 f_divergence_type: FDivergenceType = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                 **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        check(beta=beta, label_smoothing=label_smoothing)
        super().__init__(**kwargs)
        self.beta, self.label_smoothing, self.f_divergence = beta, label_smoothing, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return self.f_divergence.apply(lambda c, r: L.robust_dpo_loss(*_ratios(c, r), self.beta, self.label_smoothing),
                                       chosen, rejected, self.beta)


class BetaPairObjective(OfflinePairObjective):
    """The base of the pair objectives whose one setting is ``beta``, the scale of the log-ratios (TRL default
    0.1): APO, NCA and SPPO. A subclass implements ``pair_loss``."""

    def __init__(self, beta: float = 0.1, **kwargs) -> None:
        check(beta=beta)
        super().__init__(**kwargs)
        self.beta = beta


class BCOPair(OfflinePairObjective):
    """BCO on preference pairs (Jung et al. 2024; TRL ``bco_pair``): chosen and rejected told apart by a binary
    classifier whose logit is the implicit reward.

    Args:
        beta: Scale of the implicit reward ``beta * (ln pi - ln pi0)``. TRL default 0.1.
        running_mean: Shift the logits by the running mean reward of training so far (the paper's; kept as a
            checkpointed buffer, summed over ranks). TRL 1.16 applies no shift: False, the default.
    """

    def __init__(self, beta: float = 0.1, running_mean: bool = False, **kwargs) -> None:
        check(beta=beta)
        super().__init__(**kwargs)
        self.beta = beta
        #: The running mean (a submodule: it follows the device and is checkpointed), or None: no shift.
        self.term_state = RunningRewardMean() if running_mean else None

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        shift = 0.0  # TRL 1.16's bco_pair: no shift
        if self.term_state is not None:
            rewards = self.beta * torch.cat([chosen.policy - chosen.reference, rejected.policy - rejected.reference])
            shift = self.term_state(rewards)
        return L.bco_pair_loss(*_ratios(chosen, rejected), self.beta, shift)


class APOZero(BetaPairObjective):
    """Anchored preference optimisation, zero variant (D'Oosterlinck et al. 2024; TRL ``apo_zero``): raises the
    chosen and lowers the rejected likelihood, each against the reference (for a model weaker than its data).

    Args:
        beta: Scale of the log-ratios inside the sigmoids. TRL default 0.1.
    """

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.apo_zero_loss(*_ratios(chosen, rejected), self.beta)


class APODown(BetaPairObjective):
    """Anchored preference optimisation, down variant (D'Oosterlinck et al. 2024; TRL ``apo_down``): lowers both
    likelihoods, the rejected one more (for a model already better than its chosen responses).

    Args:
        beta: Scale of the log-ratios inside the sigmoids. TRL default 0.1.
    """

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.apo_down_loss(*_ratios(chosen, rejected), self.beta)


class NCAPair(BetaPairObjective):
    """Noise-contrastive alignment on pairs (Chen et al. 2024; TRL ``nca_pair``): each response's log-ratio is
    classified on its own, which keeps the chosen likelihood from falling as it can under DPO.

    Args:
        beta: Scale of the log-ratios. TRL default 0.1.
    """

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.nca_pair_loss(*_ratios(chosen, rejected), self.beta)


class EXOPair(OfflinePairObjective):
    """Efficient exact optimisation on pairs (Ji et al. 2024; TRL ``exo_pair``): the reverse KL from the policy's
    preference probability ``s(beta h)`` to the smoothed label (mode-seeking, where DPO's forward KL is not).

    Args:
        beta: Scale of the margin. TRL default 0.1.
        label_smoothing: Label smoothing ``eps`` in (0, 1), which the reverse KL needs finite. TRL's
            ``label_smoothing`` default is 0, which it refuses for ``exo_pair``: set it there too.
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 1e-3,
                 f_divergence_type: FDivergenceType = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                 **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        in_range("label_smoothing", label_smoothing, 0.0, 1.0, closed_low=False)  # the reverse KL's own range
        check(beta=beta)
        super().__init__(**kwargs)
        self.beta, self.label_smoothing, self.f_divergence = beta, label_smoothing, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return self.f_divergence.apply(lambda c, r: L.exo_pair_loss(*_ratios(c, r), self.beta, self.label_smoothing),
                                       chosen, rejected, self.beta)


class SPPOHard(BetaPairObjective):
    """Self-play preference optimisation with hard labels (Wu et al. 2024; TRL ``sppo_hard``): regresses the
    chosen log-ratio onto ``+1 / (2 beta)`` and the rejected onto ``-1 / (2 beta)``.

    Args:
        beta: The inverse of SPPO's step size ``eta``. TRL default 0.1 (targets of +-5 nats).
    """

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.sppo_hard_loss(*_ratios(chosen, rejected), self.beta)


class DiscoPOP(OfflinePairObjective):
    """DiscoPOP, the log-ratio-modulated loss (Lu et al. 2024; TRL ``discopop``): a mix of DPO's logistic loss
    and the exponential loss, weighted by ``s(beta h / tau)``.

    Args:
        beta: Scale of the margin. The paper's 0.05 (TRL's default beta would be 0.1).
        tau: Temperature of the mixing weight. The paper's and TRL's ``discopop_tau`` default: 0.05.
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    def __init__(self, beta: float = 0.05, tau: float = 0.05, f_divergence_type: FDivergenceType = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        f_divergence = FDivergence(f_divergence_type, f_alpha_divergence_coef)
        check(beta=beta, tau=tau)
        super().__init__(**kwargs)
        self.beta, self.tau, self.f_divergence = beta, tau, f_divergence

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return self.f_divergence.apply(lambda c, r: L.discopop_loss(*_ratios(c, r), self.beta, self.tau), chosen,
                                       rejected, self.beta)


class AOT(OfflinePairObjective):
    """Alignment via optimal transport (Melnyk et al. 2024; TRL ``aot`` and ``aot_unpaired``): DPO's loss on the
    sorted quantiles of the batch, so that the policy's margins stochastically dominate the reference's.

    Args:
        beta: Scale of the quantile differences. TRL default 0.1.
        label_smoothing: cDPO-style smoothing of the logistic loss. TRL default 0.
        paired: Compare sorted policy margins with sorted reference margins (TRL ``aot``); False sorts the
            chosen and the rejected log-ratios apart (TRL ``aot_unpaired``). Needs large per-device batches.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, paired: bool = True, **kwargs) -> None:
        check(beta=beta, label_smoothing=label_smoothing)
        super().__init__(**kwargs)
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.paired = paired

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.aot_loss(*_ratios(chosen, rejected), self.beta, self.label_smoothing, paired=self.paired)
