"""The offline pairwise losses that read lengths or per-token log-probs: SimPO, ORPO, length-normalised DPO,
LD-DPO, WPO and RPO, one thin objective each (terms of ``pair_terms.PAIR_LOSSES``).
"""

from __future__ import annotations

from lit_align.losses.pairwise import NLLReduction
from lit_align.losses.preference import FDivergence
from lit_align.objectives.offline.pair_terms import PairTermObjective, check_settings


class SimPO(PairTermObjective):
    """SimPO (Meng et al. 2024; TRL ``CPOTrainer`` with ``loss_type: simpo``): a reference-free margin loss on
    length-normalised log-likelihoods, ``-ln s(beta (mean ln pi(y+) - mean ln pi(y-)) - gamma)``.

    Args:
        beta: Scale of the per-token log-likelihood reward. 2.0, the low end of the paper's recommended 2.0-2.5
            (TRL's CPO default beta of 0.1 is for CPO's summed log-probs).
        gamma: Target reward margin. TRL's ``simpo_gamma`` default 0.5.
        label_smoothing: cDPO-style smoothing. TRL default 0 (the paper's loss).
        cpo_alpha: Weight of the chosen responses' NLL (a token mean over the batch) added to the loss. 0 is the
            SimPO paper's loss; TRL's ``CPOConfig.cpo_alpha`` defaults to 1.0 (CPO's behaviour-cloning term): set
            1.0 to train as TRL's ``CPOTrainer`` with ``loss_type: simpo`` does by default.
    """

    term = "simpo"
    default_reference = "none"
    needs_reference = None

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, cpo_alpha: float = 0.0,
                 **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, gamma=gamma, label_smoothing=label_smoothing,
                                                  cpo_alpha=cpo_alpha))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class ORPO(PairTermObjective):
    """ORPO (Hong et al. 2024; TRL ``ORPOTrainer``): SFT on the chosen response plus ``lam`` times an odds-ratio
    loss between the responses' length-normalised likelihoods. Reference-free: none is loaded.

    Args:
        lam: Weight of the odds-ratio term (the paper's lambda, TRL's ``beta``). Both default to 0.1.
        nll_reduction: The SFT term: ``token``, the token mean over the batch's chosen completions (TRL's, which
            counts the prompt tokens too: those have no log-probs here), or ``example``, each example's mean
            per-token NLL.
    """

    term = "orpo"
    default_reference = "none"
    needs_reference = None

    def __init__(self, lam: float = 0.1, nll_reduction: NLLReduction = "token", **kwargs) -> None:
        settings = check_settings(self.term, dict(lam=lam, nll_reduction=nll_reduction))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class LengthNormalizedDPO(PairTermObjective):
    """DPO on per-token log-ratios (TRL ``sigmoid_norm``): each log-ratio divided by its response's length.

    Args:
        beta: KL regularisation strength on the per-token scale. TRL default 0.1.
        label_smoothing: cDPO label smoothing. 0, TRL's ``sigmoid_norm`` (which has none).
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
        f_alpha_divergence_coef: The alpha of ``alpha_divergence``. TRL default: 0.5.
    """

    term = "sigmoid_norm"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, f_divergence_type: FDivergence = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, label_smoothing=label_smoothing,
                                                  f_divergence_type=f_divergence_type,
                                                  f_alpha_divergence_coef=f_alpha_divergence_coef))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class LDDPO(PairTermObjective):
    """Length-desensitised DPO (Liu et al. 2024; TRL ``ld_alpha``): in every summed log-prob, the policy's and the
    reference's (as TRL), the tokens of the longer response beyond the shorter one's length count ``alpha`` times,
    so length alone moves the margin less. Needs a live reference (``copy`` or ``lora``).

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the excess tokens in [0, 1]; 1 is DPO. TRL has no default (``ld_alpha: None`` is off);
            0.5 is a middle value: the paper tunes it per model.
    """

    term = "sigmoid"

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta))
        super().__init__(**kwargs)
        self.use_settings(**settings)
        self.use_ld_alpha(alpha)


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
        settings = check_settings(self.term, dict(beta=beta, batch_normalized=batch_normalized))
        super().__init__(**kwargs)
        self.use_settings(**settings)


class RPO(PairTermObjective):
    """RPO (Pang et al. 2024): DPO plus ``alpha`` times the chosen responses' NLL. TRL 1.16 has no ``rpo_alpha``;
    its counterpart is ``loss_type: [sigmoid, sft]`` with ``loss_weights: [1.0, alpha]``.

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the NLL term. The paper's 1.0.
        nll_reduction: ``token``: the token mean over the batch's chosen completions (TRL's ``sft``); ``example``:
            each example's mean per-token NLL (equal when every chosen response has the same length).
    """

    term = "rpo"

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, nll_reduction: NLLReduction = "token",
                 **kwargs) -> None:
        settings = check_settings(self.term, dict(beta=beta, alpha=alpha, nll_reduction=nll_reduction))
        super().__init__(**kwargs)
        self.use_settings(**settings)
