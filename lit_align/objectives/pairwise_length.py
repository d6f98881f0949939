"""The offline pairwise losses that read lengths or per-token log-probs: SimPO, ORPO, length-normalised DPO,
LD-DPO, WPO and RPO, one thin objective each (terms of ``pair_terms.PAIR_LOSSES``).
"""

from __future__ import annotations

from lit_align.objectives.pair_terms import PairTermObjective, positive


class SimPO(PairTermObjective):
    """SimPO (Meng et al. 2024; TRL ``CPOTrainer`` with ``loss_type: simpo``): a reference-free margin loss on
    length-normalised log-likelihoods, ``-ln s(beta (mean ln pi(y+) - mean ln pi(y-)) - gamma)``.

    Args:
        beta: Scale of the per-token log-likelihood reward. 2.0, the low end of the paper's recommended 2.0-2.5
            (TRL's CPO default beta of 0.1 is for CPO's summed log-probs).
        gamma: Target reward margin. TRL's ``simpo_gamma`` default 0.5.
        label_smoothing: cDPO-style smoothing. TRL default 0 (the paper's loss).
    """

    term = "simpo"
    default_reference = "none"
    needs_reference = None

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, **kwargs) -> None:
        positive("beta", beta)
        super().__init__(**kwargs)
        self.use_settings(beta=beta, gamma=gamma, label_smoothing=label_smoothing)


class ORPO(PairTermObjective):
    """ORPO (Hong et al. 2024; TRL ``ORPOTrainer``): SFT on the chosen response plus ``lam`` times an odds-ratio
    loss between the responses' length-normalised likelihoods. Reference-free: none is loaded.

    Args:
        lam: Weight of the odds-ratio term (the paper's lambda, TRL's ``beta``). Both default to 0.1.
    """

    term = "orpo"
    default_reference = "none"
    needs_reference = None

    def __init__(self, lam: float = 0.1, **kwargs) -> None:
        positive("lam", lam)
        super().__init__(**kwargs)
        self.use_settings(lam=lam)


class LengthNormalizedDPO(PairTermObjective):
    """DPO on per-token log-ratios (TRL ``sigmoid_norm``): each log-ratio divided by its response's length.

    Args:
        beta: KL regularisation strength on the per-token scale. TRL default 0.1.
        label_smoothing: cDPO label smoothing. TRL default 0.
    """

    term = "sigmoid_norm"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, **kwargs) -> None:
        positive("beta", beta)
        super().__init__(**kwargs)
        self.use_settings(beta=beta, label_smoothing=label_smoothing)


class LDDPO(PairTermObjective):
    """Length-desensitised DPO (Liu et al. 2024; TRL ``ld_alpha``): in the policy's log-probs, the tokens of the
    longer response beyond the shorter one's length count ``alpha`` times, so length alone moves the margin less.
    The reference's log-probs stay summed (as in TRL).

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the excess tokens in [0, 1]; 1 is DPO. TRL has no default (``ld_alpha: None`` is off);
            0.5 is a middle value: the paper tunes it per model.
    """

    term = "ld_dpo"

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, **kwargs) -> None:
        positive("beta", beta)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(**kwargs)
        self.use_settings(beta=beta, alpha=alpha)


class WPO(PairTermObjective):
    """Weighted preference optimisation (Zhou et al. 2024; TRL ``use_weighting``): DPO with each pair weighted by
    the policy's current length-normalised probability of both responses, so off-policy pairs count less.

    The weight here is the paper's unadjusted ``exp(mean ln pi(y_t))`` per response: its "greedy alignment"
    divisor ``sum_v pi(v)^2`` needs the whole next-token distribution, which the row log-probs do not keep
    (``lit_align.losses.wpo_weights`` takes it when given).

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        batch_normalized: Divide the weights by their batch mean, so that the loss keeps DPO's scale (the
            unadjusted weights of long responses are tiny); False uses them as they are (clamped at 1, as TRL).
    """

    term = "wpo"

    def __init__(self, beta: float = 0.1, batch_normalized: bool = True, **kwargs) -> None:
        positive("beta", beta)
        super().__init__(**kwargs)
        self.use_settings(beta=beta, batch_normalized=batch_normalized)


class RPO(PairTermObjective):
    """RPO (Pang et al. 2024; TRL ``rpo_alpha``): DPO plus ``alpha`` times the chosen response's mean per-token NLL.

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the NLL term. The paper's 1.0 (TRL's ``rpo_alpha`` is off by default).
    """

    term = "rpo"

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, **kwargs) -> None:
        positive("beta", beta)
        super().__init__(**kwargs)
        self.use_settings(beta=beta, alpha=alpha)
