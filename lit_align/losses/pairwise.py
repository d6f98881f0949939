"""The offline pairwise losses of the DPO family that TRL offers as ``loss_type``s, each from its paper's equation.

Notation (per pair, all (B,) tensors): ``ln pi(y+)``, ``ln pi(y-)`` are the policy's summed completion log-probs
of the chosen and the rejected response, ``ln pi0`` the reference's, ``|y|`` a completion's length in tokens;
the log-ratios are ``h+ = ln pi(y+) - ln pi0(y+)``, ``h- = ln pi(y-) - ln pi0(y-)`` and the DPO margin is
``h = h+ - h-``; ``s`` is the logistic sigmoid. Where a reference is optional (``None``) its log-probs count as
zero: the loss is then the paper's reference-free form. Every loss returns per-example losses (B,) and the
detached implicit rewards of both responses (``PreferenceLoss``), so reduction stays with the caller.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from lit_align.losses.preference import PreferenceLoss, dpo_loss

Tensor = torch.Tensor
NLLReduction = Literal["token", "example"]


def _log_ratios(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor | None,
                reference_rejected: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(h+, h-)``; a missing reference counts as ``ln pi0 = 0`` (the reference-free forms)."""
    chosen = policy_chosen if reference_chosen is None else policy_chosen - reference_chosen
    rejected = policy_rejected if reference_rejected is None else policy_rejected - reference_rejected
    return chosen, rejected


def _rewards(losses: Tensor, chosen: Tensor, rejected: Tensor, scale: float) -> PreferenceLoss:
    return PreferenceLoss(losses, scale * chosen.detach(), scale * rejected.detach())


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs divided by the completion length (an empty completion counts as one token)."""
    return logps / lengths.clamp(min=1).to(logps.dtype)


def simpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
               beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0, cpo_alpha: float = 0.0
               ) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): ``-ln s(beta/|y+| ln pi(y+) - beta/|y-| ln pi(y-) - gamma)``.

    Reference-free and length-normalised: the implicit reward is the mean per-token log-prob times ``beta``, and
    ``gamma`` is a target margin between the rewards. ``label_smoothing`` eps gives the cDPO-style
    ``-(1-eps) ln s(z) - eps ln s(-z)`` (TRL's CPO form; 0 is the paper's loss). ``cpo_alpha`` adds that weight
    times the chosen responses' NLL, a token mean over the batch (``nll_loss``): TRL's ``CPOTrainer`` with
    ``loss_type: simpo`` (its ``cpo_alpha`` default is 1.0; 0 is the SimPO paper's loss).
    """
    chosen = beta * _per_token(policy_chosen, chosen_lengths)
    rejected = beta * _per_token(policy_rejected, rejected_lengths)
    logits = chosen - rejected - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    if cpo_alpha:
        losses = losses + cpo_alpha * nll_loss(policy_chosen, chosen_lengths)
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())


def _log_odds(mean_logps: Tensor) -> Tensor:
    """``ln (P / (1 - P))`` with ``ln P`` the mean per-token log-prob (< 0): ``ln P - ln(1 - e^{ln P})``."""
    return mean_logps - torch.log(-torch.expm1(mean_logps.clamp(max=-1e-6)))


def orpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
              lam: float = 0.1, nll_reduction: NLLReduction = "token") -> PreferenceLoss:
    """ORPO (Hong et al. 2024): ``L_SFT + lam * L_OR`` with ``L_OR = -ln s(ln odds(y+) - ln odds(y-))``.

    ``P(y) = exp(ln pi(y) / |y|)`` is the length-normalised likelihood and ``odds(y) = P(y) / (1 - P(y))``;
    ``L_SFT`` the chosen responses' NLL (``nll_loss``: by default the token mean over the batch, as TRL; TRL's
    also counts the prompt tokens, which the completion log-probs here do not hold). Reference-free. Rewards are
    ``lam`` times the mean per-token log-probs (TRL's).
    """
    chosen, rejected = _per_token(policy_chosen, chosen_lengths), _per_token(policy_rejected, rejected_lengths)
    odds_ratio = -F.logsigmoid(_log_odds(chosen) - _log_odds(rejected))
    return _rewards(nll_loss(policy_chosen, chosen_lengths, nll_reduction) + lam * odds_ratio, chosen, rejected, lam)


def hinge_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor | None = None,
               reference_rejected: Tensor | None = None, beta: float = 0.1) -> PreferenceLoss:
    """Hinge / SLiC (Zhao et al. 2023, calibration term; RSO, Liu et al. 2023): ``max(0, 1 - beta h)``.

    SLiC's ``max(0, delta - ln pi(y+) + ln pi(y-))`` is this loss without a reference, scaled by ``1/beta``, with
    margin ``delta = 1 / beta``; with a reference it is RSO's normalised-likelihood hinge (TRL's ``hinge``).
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return _rewards(torch.relu(1 - beta * (chosen - rejected)), chosen, rejected, beta)


def robust_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                    reference_rejected: Tensor, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024): ``((1-eps) l(beta h) - eps l(-beta h)) / (1 - 2 eps)``.

    ``l(z) = -ln s(z)`` and ``eps`` < 1/2 the label-flip rate: the expectation over flipped labels of this loss is
    the clean-label DPO loss (unbiased), unlike cDPO's ``(1-eps) l(beta h) + eps l(-beta h)``. ``eps = 0`` is DPO.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"the label-flip rate must be in [0, 0.5), got {label_smoothing}")
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    logits = beta * (chosen - rejected)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing)
    return _rewards(losses, chosen, rejected, beta)


def bco_pair_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.1, reward_shift: Tensor | float = 0.0
                  ) -> PreferenceLoss:
    """BCO on pairs (Jung et al. 2024): ``-ln s(beta h+ - delta) - ln s(-(beta h- - delta))``.

    A binary classifier with logit ``beta h`` tells chosen (label 1) from rejected (label 0) responses. The paper
    shifts the logits by ``delta``, the mean implicit reward ``beta h`` seen so far (``BCOPair(running_mean=True)``
    keeps one); TRL 1.16's ``bco_pair`` applies no shift: ``reward_shift = 0``, the default. Detached.
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    delta = torch.as_tensor(reward_shift, dtype=chosen_rewards.dtype, device=chosen_rewards.device).detach()
    losses = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
    return _rewards(losses, chosen, rejected, beta)


def apo_zero_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.1) -> PreferenceLoss:
    """APO-zero (D'Oosterlinck et al. 2024): ``(1 - s(beta h+)) + s(beta h-)``.

    Anchored: raises the chosen and lowers the rejected likelihood relative to the reference, each on its own (for
    a model weaker than the chosen responses). The paper writes ``-s(beta h+) + s(beta h-)``; the added 1 (TRL's
    form) keeps the loss non-negative and changes no gradient.
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)
    return _rewards(losses, chosen, rejected, beta)


def apo_down_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.1) -> PreferenceLoss:
    """APO-down (D'Oosterlinck et al. 2024): ``s(beta h+) + (1 - s(beta (h+ - h-)))``.

    Lowers both likelihoods, the rejected one more (for a model already better than the chosen responses). The
    paper's ``s(beta h+) - s(beta (h+ - h-))`` plus 1 (TRL's non-negative form; the same gradient).
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(beta * (chosen - rejected))
    return _rewards(losses, chosen, rejected, beta)


def nca_pair_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.1) -> PreferenceLoss:
    """NCA on pairs (Chen et al. 2024 with K = 2 and the winner's label 1):
    ``-ln s(beta h+) - 1/2 ln s(-beta h+) - 1/2 ln s(-beta h-)``.

    Noise-contrastive: each response's own log-ratio is classified against the reference, so the loss is driven by
    absolute likelihoods (it keeps the chosen likelihood from falling), not only by the margin as DPO is.
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = (-F.logsigmoid(beta * chosen) - 0.5 * F.logsigmoid(-beta * chosen)
              - 0.5 * F.logsigmoid(-beta * rejected))
    return _rewards(losses, chosen, rejected, beta)


def exo_pair_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.1, label_smoothing: float = 1e-3) -> PreferenceLoss:
    """EXO on pairs (Ji et al. 2024): the reverse KL ``KL(p_theta || p_data)`` of two-outcome laws.

    ``p_theta = (s(beta h), s(-beta h))`` is the policy's probability that y+ (resp. y-) is preferred and
    ``p_data = (1 - eps, eps)`` the smoothed label: ``s(beta h) (ln s(beta h) - ln(1-eps)) + s(-beta h)
    (ln s(-beta h) - ln eps)``. Mode-seeking where DPO's forward KL is mean-seeking; needs ``0 < eps < 1``
    (default 1e-3; TRL's ``label_smoothing`` default is 0, which it refuses for ``exo_pair``).
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"EXO needs label_smoothing in (0, 1), got {label_smoothing}")
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    logits = beta * (chosen - rejected)
    losses = (torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-label_smoothing))
              + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(label_smoothing)))
    return _rewards(losses, chosen, rejected, beta)


def sppo_hard_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                   reference_rejected: Tensor, beta: float = 0.1) -> PreferenceLoss:
    """SPPO with hard labels (Wu et al. 2024): ``(h+ - eta/2)^2 + (h- + eta/2)^2`` with ``eta = 1/beta``.

    SPPO regresses each log-ratio onto ``eta (P(y beats pi_t) - 1/2)``; hard labels put the winning probability at
    1 for y+ and 0 for y-, so the chosen log-ratio is pushed to ``+1/(2 beta)`` and the rejected to
    ``-1/(2 beta)``, each independently. The reference plays the iterate ``pi_t``.
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    target = 0.5 / beta
    return _rewards((chosen - target) ** 2 + (rejected + target) ** 2, chosen, rejected, beta)


def discopop_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                  reference_rejected: Tensor, beta: float = 0.05, tau: float = 0.05) -> PreferenceLoss:
    """DiscoPOP / LRML (Lu et al. 2024): ``(1 - s(rho/tau)) l(rho) + s(rho/tau) e^{-rho}``, ``rho = beta h``.

    A log-ratio-modulated mix of the logistic (DPO) loss ``l(rho) = -ln s(rho)`` and the exponential loss: the
    weight ``s(rho / tau)`` moves towards the exponential loss as the margin grows. Defaults beta = tau = 0.05
    (the paper's; TRL's ``discopop_tau`` default is 0.05 too).
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    rho = beta * (chosen - rejected)
    weight = torch.sigmoid(rho / tau)
    return _rewards((1 - weight) * -F.logsigmoid(rho) + weight * torch.exp(-rho), chosen, rejected, beta)


def aot_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0, paired: bool = True) -> PreferenceLoss:
    """AOT (Melnyk et al. 2024): DPO's logistic loss on sorted quantiles (first-order dominance).

    ``paired`` (TRL ``aot``): the batch's policy margins ``ln pi(y+) - ln pi(y-)`` and reference margins are sorted
    separately and the i-th smallest of each compared, ``z_i = beta (sort(m_pi)_i - sort(m_pi0)_i)``; unpaired
    (TRL ``aot_unpaired``): ``z_i = beta (sort(h+)_i - sort(h-)_i)``. Loss ``-(1-eps) ln s(z_i) - eps ln s(-z_i)``.
    Losses are per quantile (entry i is not example i; their mean is the batch loss); the rewards per example.
    Needs many pairs per device to estimate a distribution.
    """
    chosen, rejected = _log_ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    if paired:
        first, second = policy_chosen - policy_rejected, reference_chosen - reference_rejected
    else:
        first, second = chosen, rejected
    logits = beta * (torch.sort(first).values - torch.sort(second).values)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _rewards(losses, chosen, rejected, beta)


def length_normalized_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                               reference_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                               beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """Length-normalised DPO (TRL ``sigmoid_norm``): DPO on ``h+/|y+| - h-/|y-|``, mean per-token log-ratios.

    Removes DPO's pull towards longer chosen responses. The rewards are ``beta`` times the summed log-ratios, as
    TRL logs them for every loss type. ``label_smoothing`` gives cDPO's smoothing (TRL's ``sigmoid_norm`` has none:
    0, the default).
    """
    out = dpo_loss(_per_token(policy_chosen, chosen_lengths), _per_token(policy_rejected, rejected_lengths),
                   _per_token(reference_chosen, chosen_lengths), _per_token(reference_rejected, rejected_lengths),
                   beta, label_smoothing)
    return _rewards(out.losses, policy_chosen - reference_chosen, policy_rejected - reference_rejected, beta)


def length_desensitized_logps(token_logps: Tensor, mask: Tensor, public_lengths: Tensor, alpha: float) -> Tensor:
    """LD-DPO's log-likelihood (Liu et al. 2024): the first ``l_p`` completion tokens in full, the rest
    scaled by ``alpha``: ``sum_{t <= l_p} ln p_t + alpha sum_{t > l_p} ln p_t``.

    ``token_logps`` (R, T) and ``mask`` (R, T) per completion token, ``public_lengths`` (R,): ``l_p``, the shorter
    length of the pair the row belongs to. ``alpha = 1`` gives the plain sum.
    """
    position = mask.long().cumsum(-1)  # (R, T): 1 at the first completion token
    weights = torch.where(position <= public_lengths[:, None], 1.0, alpha) * mask
    return (token_logps * weights.to(token_logps.dtype)).sum(-1)


def wpo_weights(chosen_token_logps: Tensor, chosen_mask: Tensor, rejected_token_logps: Tensor,
                rejected_mask: Tensor, chosen_log_norms: Tensor | None = None,
                rejected_log_norms: Tensor | None = None) -> Tensor:
    """WPO's pair weight (Zhou et al. 2024): ``w(x, y+) w(x, y-)``, detached, (B,).

    ``w(x, y) = exp(1/|y| sum_t (ln pi(y_t) - ln sum_v pi(v)^2))``: the policy's (length-normalised) probability of
    the response, divided per token by ``sum_v pi(v)^2``, the probability of the token that greedy sampling would
    agree on (the paper's "greedy alignment"; it makes the weight 1 for a uniform or a greedy-sampled policy).
    ``*_log_norms`` (R, T): ``ln sum_v pi(v | y_<t)^2`` per token; without them the weight is the unadjusted
    ``exp(mean ln pi(y_t))`` of the paper's unadjusted form. The weight is clamped at 1 so that no pair counts for more
    than its unweighted loss (the adjusted per-token ratio can exceed 1).
    """
    def weight(token_logps, mask, log_norms):
        values = token_logps if log_norms is None else token_logps - log_norms
        mask = mask.to(values.dtype)
        return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    logw = weight(chosen_token_logps, chosen_mask, chosen_log_norms) + weight(rejected_token_logps, rejected_mask,
                                                                             rejected_log_norms)
    return torch.exp(logw.detach()).clamp(max=1.0)


def rpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor,
             chosen_lengths: Tensor, beta: float = 0.1, alpha: float = 1.0,
             nll_reduction: NLLReduction = "token") -> PreferenceLoss:
    """RPO (Pang et al. 2024): ``DPO + alpha * NLL(y+)``, DPO plus the chosen responses' NLL (``nll_loss``).

    ``nll_reduction="token"``: the token mean over the batch, TRL's ``loss_type: [sigmoid, sft]`` with
    ``loss_weights: [1, alpha]``; ``"example"``: each example's mean per-token NLL (the two agree when every chosen
    response has the same length; the paper divides by prompt plus response length). ``alpha = 1`` is the paper's.
    """
    out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    return out._replace(losses=out.losses + alpha * nll_loss(policy_chosen, chosen_lengths, nll_reduction))


def nll_loss(policy_chosen: Tensor, chosen_lengths: Tensor, reduction: NLLReduction = "token") -> Tensor:
    """The chosen responses' NLL as per-example values (B,) whose batch mean is the loss.

    ``token``: ``-ln pi(y+_i) * B / sum_j |y+_j|``, so that the mean is the token mean over the batch
    ``-sum_i ln pi(y+_i) / sum_j |y+_j|`` (TRL's ``sft`` term). ``example``: ``-ln pi(y+_i) / |y+_i|``, each example's
    mean per-token NLL. Example: ln pi = (-3, -1), lengths (2, 2): both (1.5, 0.5); lengths (2, 1): token
    (-3, -1) * 2/3 = (2, 0.6667), mean 4/3; example (1.5, 1).
    """
    if reduction == "example":
        return -_per_token(policy_chosen, chosen_lengths)
    if reduction == "token":
        total = chosen_lengths.sum().clamp(min=1).to(policy_chosen.dtype)
        return -policy_chosen * policy_chosen.shape[0] / total
    raise ValueError(f"nll reduction must be token or example, got {reduction!r}")


def length_normalized_ipo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                               reference_rejected: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                               tau: float = 0.1) -> PreferenceLoss:
    """IPO on per-token log-ratios (TRL's ``ipo``): ``(h+/|y+| - h-/|y-| - 1/(2 tau))^2``.

    The IPO paper (Azar et al. 2023) uses summed log-probs (``lit_align.losses.ipo_loss``); TRL divides
    each log-ratio by its response length first. The rewards are ``tau`` times the summed log-ratios (TRL's).
    """
    chosen_sum, rejected_sum = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    chosen, rejected = _per_token(chosen_sum, chosen_lengths), _per_token(rejected_sum, rejected_lengths)
    return _rewards((chosen - rejected - 1.0 / (2.0 * tau)) ** 2, chosen_sum, rejected_sum, tau)
