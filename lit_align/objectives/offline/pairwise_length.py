"""The offline pairwise losses that read lengths or per-token log-probs: SimPO, ORPO, length-normalised DPO,
LD-DPO, WPO, RPO and the chosen responses' NLL, one thin objective each (``pair_loss`` calls ``lit_align.losses``).
"""

from __future__ import annotations

import torch

from lit_align import losses as L
from lit_align.losses import PreferenceLoss
from lit_align.losses.pairwise import NLLReduction
from lit_align.losses.preference import FDivergence as FDivergenceType
from lit_align.objectives.offline.base import OfflinePairObjective
from lit_align.objectives.offline.pair_terms import FDivergence, check, check_ld_alpha


class SimPO(OfflinePairObjective):
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

    needs_reference = None  # no reference term: none is loaded and no reference forward runs

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, cpo_alpha: float = 0.0,
                 **kwargs) -> None:
        check(beta=beta, label_smoothing=label_smoothing, cpo_alpha=cpo_alpha)
        super().__init__(**kwargs)
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.cpo_alpha = cpo_alpha

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.simpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, self.beta, self.gamma,
                            self.label_smoothing, self.cpo_alpha)


class ORPO(OfflinePairObjective):
    """ORPO (Hong et al. 2024; TRL ``ORPOTrainer``): SFT on the chosen response plus ``lam`` times an odds-ratio
    loss between the responses' length-normalised likelihoods. Reference-free: none is loaded.

    Args:
        lam: Weight of the odds-ratio term (the paper's lambda, TRL's ``beta``). Both default to 0.1.
        nll_reduction: The SFT term: ``token``, the token mean over the batch's chosen completions (TRL's, which
            counts the prompt tokens too: those have no log-probs here), or ``example``, each example's mean
            per-token NLL.
    """

    needs_reference = None

    def __init__(self, lam: float = 0.1, nll_reduction: NLLReduction = "token", **kwargs) -> None:
        check(lam=lam, nll_reduction=nll_reduction)
        super().__init__(**kwargs)
        self.lam = lam
        self.nll_reduction = nll_reduction

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.orpo_loss(chosen.policy, rejected.policy, chosen.lengths, rejected.lengths, self.lam,
                           self.nll_reduction)


class LengthNormalizedDPO(OfflinePairObjective):
    """DPO on per-token log-ratios (TRL ``sigmoid_norm``): each log-ratio divided by its response's length.

    Args:
        beta: KL regularisation strength on the per-token scale. TRL default 0.1.
        label_smoothing: cDPO label smoothing. 0, TRL's ``sigmoid_norm`` (which has none).
        f_divergence_type: TRL's f-divergence regulariser (``reverse_kl``, the default, ``forward_kl``,
            ``js_divergence``, ``alpha_divergence``): the log-ratios replaced by ``f'(pi/pi0)`` as in ``DPO``.
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
        def loss(c, r):
            return L.length_normalized_dpo_loss(c.policy, r.policy, c.reference, r.reference, c.lengths, r.lengths,
                                                self.beta, self.label_smoothing)

        return self.f_divergence.apply(loss, chosen, rejected, self.beta)


class LDDPO(OfflinePairObjective):
    """Length-desensitised DPO (Liu et al. 2024; TRL ``ld_alpha``): in every summed log-prob, the policy's and the
    reference's (as TRL), the tokens of the longer response beyond the shorter one's length count ``alpha`` times,
    so length alone moves the margin less. Needs a live reference (``copy`` or ``lora``).

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the excess tokens in [0, 1]; 1 is DPO. TRL has no default (``ld_alpha: None`` is off);
            0.5 is a middle value: the paper tunes it per model.
    """

    @classmethod
    def reference_need(cls, settings):
        return "samples"  # the reference's per-token log-probs: a live one

    @classmethod
    def reference_owner(cls, settings):
        return LD_OWNER

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, **kwargs) -> None:
        check(beta=beta)
        check_ld_alpha(alpha)
        super().__init__(**kwargs)
        self.beta = beta
        self.ld_alpha = alpha

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta)


class WPO(OfflinePairObjective):
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

    def __init__(self, beta: float = 0.1, batch_normalized: bool = True, **kwargs) -> None:
        check(beta=beta)
        super().__init__(**kwargs)
        self.beta = beta
        self.batch_normalized = batch_normalized

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        out = L.dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta)
        weights = L.wpo_weights(chosen.tokens, chosen.mask, rejected.tokens, rejected.mask)
        if self.batch_normalized:
            weights = weights / weights.mean().clamp(min=torch.finfo(weights.dtype).tiny)
        return out._replace(losses=weights * out.losses)


class RPO(OfflinePairObjective):
    """RPO (Pang et al. 2024): DPO plus ``alpha`` times the chosen responses' NLL. TRL 1.16 has no ``rpo_alpha``;
    its counterpart is ``loss_type: [sigmoid, sft]`` with ``loss_weights: [1.0, alpha]``.

    Args:
        beta: KL regularisation strength. TRL default 0.1.
        alpha: Weight of the NLL term. The paper's 1.0.
        nll_reduction: ``token``: the token mean over the batch's chosen completions (TRL's ``sft``); ``example``:
            each example's mean per-token NLL (equal when every chosen response has the same length).
    """

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, nll_reduction: NLLReduction = "token",
                 **kwargs) -> None:
        check(beta=beta, alpha=alpha, nll_reduction=nll_reduction)
        super().__init__(**kwargs)
        self.beta = beta
        self.alpha = alpha
        self.nll_reduction = nll_reduction

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return L.rpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, chosen.lengths,
                          self.beta, self.alpha, self.nll_reduction)


class ChosenNLL(OfflinePairObjective):
    """The chosen responses' negative log-likelihood on preference pairs (TRL's ``sft`` loss type): SFT as a part
    of ``CombinedPairLoss``, e.g. MPO's. Its rewards are both responses' mean per-token log-probs. Reference-free.

    Args:
        nll_reduction: ``token``: the token mean over the batch's chosen completions (TRL's ``sft``); ``example``:
            each example's mean per-token NLL.
    """

    needs_reference = None

    def __init__(self, nll_reduction: NLLReduction = "token", **kwargs) -> None:
        check(nll_reduction=nll_reduction)
        super().__init__(**kwargs)
        self.nll_reduction = nll_reduction

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        # the per-token log-probs as they are (TRL's sft reads them so, also under ld_alpha)
        nll = L.nll_loss(chosen.tokens.sum(-1), chosen.lengths, self.nll_reduction)
        return PreferenceLoss(nll, (chosen.policy / chosen.lengths.clamp(min=1)).detach(),
                              (rejected.policy / rejected.lengths.clamp(min=1)).detach())


#: Who needs a live reference under ``ld_alpha``, as a refusal names it.
LD_OWNER = "ld_alpha (the reference's log-probs desensitised token by token)"
