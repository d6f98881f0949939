"""TRL's offline pairwise ``loss_type``s of summed log-probs against a reference, one thin objective each.

Each class is one term of ``pair_terms.PAIR_LOSSES`` with its settings; the maths is in
``lit_align/losses/pairwise.py``. Defaults are TRL's ``DPOConfig`` (``beta: 0.1``) unless a paper gives its own.
Every one also takes TRL's ``ld_alpha`` (``pair_terms.LengthDesensitizable``) through its subclass ``LDDPO`` or
``CombinedPairLoss``.
The length-aware losses (SimPO, ORPO, length-normalised and length-desensitised DPO, WPO, RPO) are in
``pairwise_length.py``.
"""

from __future__ import annotations

from lit_align.losses.preference import FDivergence
from lit_align.objectives.offline.pair_terms import PairTermObjective, check_settings


class Hinge(PairTermObjective):
    """Hinge loss on the DPO margin (SLiC, Zhao et al. 2023; RSO, Liu et al. 2023): ``max(0, 1 - beta h)``.

    Args:
        beta: Inverse margin: the loss stops pushing once the margin ``h`` reaches ``1 / beta``. TRL default 0.1.
        reference_free: Drop the reference (SLiC's own calibration loss, on the policy's log-prob margin):
            none is loaded. TRL's ``hinge`` uses the reference (False).
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    term = "hinge"

    def __init__(self, beta: float = 0.1, reference_free: bool = False, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        if reference_free:
            self.needs_reference = None
            self.default_reference = "none"
        super().__init__(**kwargs)
        self.use_settings(**settings)


class RobustDPO(PairTermObjective):
    """Robust DPO (Chowdhury et al. 2024): DPO corrected to be unbiased under labels flipped at rate ``eps``.

    Args:
        beta: KL regularisation strength, as in DPO. TRL default 0.1.
        label_smoothing: The assumed label-flip rate ``eps`` in [0, 0.5). TRL's default 0 reduces the loss to
            DPO; 0.1 here assumes one label in ten is wrong.
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    term = "robust"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, label_smoothing=label_smoothing,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class BCOPair(PairTermObjective):
    """BCO on preference pairs (Jung et al. 2024; TRL ``bco_pair``): chosen and rejected told apart by a binary
    classifier whose logit is the implicit reward.

    Args:
        beta: Scale of the implicit reward ``beta * (ln pi - ln pi0)``. TRL default 0.1.
        running_mean: Shift the logits by the running mean reward of training so far (the paper's; kept as a
            checkpointed buffer, summed over ranks). TRL 1.16 applies no shift: False, the default.
    """

    term = "bco_pair"

    def __init__(self, beta: float = 0.1, running_mean: bool = False, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, running_mean=running_mean))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class APOZero(PairTermObjective):
    """Anchored preference optimisation, zero variant (D'Oosterlinck et al. 2024; TRL ``apo_zero``): raises the
    chosen and lowers the rejected likelihood, each against the reference (for a model weaker than its data).

    Args:
        beta: Scale of the log-ratios inside the sigmoids. TRL default 0.1.
    """

    term = "apo_zero"

    def __init__(self, beta: float = 0.1, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class APODown(PairTermObjective):
    """Anchored preference optimisation, down variant (D'Oosterlinck et al. 2024; TRL ``apo_down``): lowers both
    likelihoods, the rejected one more (for a model already better than its chosen responses).

    Args:
        beta: Scale of the log-ratios inside the sigmoids. TRL default 0.1.
    """

    term = "apo_down"

    def __init__(self, beta: float = 0.1, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class NCAPair(PairTermObjective):
    """Noise-contrastive alignment on pairs (Chen et al. 2024; TRL ``nca_pair``): each response's log-ratio is
    classified on its own, which keeps the chosen likelihood from falling as it can under DPO.

    Args:
        beta: Scale of the log-ratios. TRL default 0.1.
    """

    term = "nca_pair"

    def __init__(self, beta: float = 0.1, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class EXOPair(PairTermObjective):
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

    term = "exo_pair"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 1e-3, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, label_smoothing=label_smoothing,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class SPPOHard(PairTermObjective):
    """Self-play preference optimisation with hard labels (Wu et al. 2024; TRL ``sppo_hard``): regresses the
    chosen log-ratio onto ``+1 / (2 beta)`` and the rejected onto ``-1 / (2 beta)``.

    Args:
        beta: The inverse of SPPO's step size ``eta``. TRL default 0.1 (targets of +-5 nats).
    """

    term = "sppo_hard"

    def __init__(self, beta: float = 0.1, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class DiscoPOP(PairTermObjective):
    """DiscoPOP, the log-ratio-modulated loss (Lu et al. 2024; TRL ``discopop``): a mix of DPO's logistic loss
    and the exponential loss, weighted by ``s(beta h / tau)``.

    Args:
        beta: Scale of the margin. The paper's 0.05 (TRL's default beta would be 0.1).
        tau: Temperature of the mixing weight. The paper's and TRL's ``discopop_tau`` default: 0.05.
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    term = "discopop"

    def __init__(self, beta: float = 0.05, tau: float = 0.05, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, tau=tau,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class AOT(PairTermObjective):
    """Alignment via optimal transport (Melnyk et al. 2024; TRL ``aot`` and ``aot_unpaired``): DPO's loss on the
    sorted quantiles of the batch, so that the policy's margins stochastically dominate the reference's.

    Args:
        beta: Scale of the quantile differences. TRL default 0.1.
        label_smoothing: cDPO-style smoothing of the logistic loss. TRL default 0.
        paired: Compare sorted policy margins with sorted reference margins (TRL ``aot``); False sorts the
            chosen and the rejected log-ratios apart (TRL ``aot_unpaired``). Needs large per-device batches.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, paired: bool = True, **kwargs) -> None:
        self.term = "aot" if paired else "aot_unpaired"
        settings = check_settings(self.term, dict(beta=beta, label_smoothing=label_smoothing))
        super().__init__(**kwargs)
        self.use_settings(**settings)
