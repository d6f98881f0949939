"""Every objective of the convergence benchmark, trained on tabular policies with lit-align's own losses.

A policy is an (S, X, A) table of logits (S independent trials); the log-prob of a response is an entry of its
``log_softmax``, so ``lit_align.losses`` applies unchanged. Offline objectives sum their per-pair losses over
the n pairs; on-policy objectives (RLHF, reverse KL) are the paper's expectations over responses, computed
exactly. Each problem is solved to convergence by full-batch L-BFGS in float64.

``ridge`` adds ``ridge/2 * ||theta - theta_0||^2`` (theta_0: the reference logits for policies, 0 for rewards)
to the summed loss: a fixed Gaussian prior whose weight relative to the data fades as 1/n. It is needed because
with few pairs some responses are never compared, or the comparisons are separable, and the unregularised
maximum-likelihood estimate is at infinity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_align.data.tabular_oracle import TabularOracle, TabularPairs, pick
from lit_align.losses import bradley_terry_loss, distillation_loss, dpo_loss, pmle_loss


def minimise(loss_fn: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, max_iter: int = 500) -> torch.Tensor:
    """argmin of a smooth loss of an (S, X, A) table by full-batch L-BFGS, starting at ``init``."""
    theta = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(theta)
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach()


def _ridge(theta: torch.Tensor, centre: torch.Tensor | float, ridge: float) -> torch.Tensor:
    return 0.5 * ridge * ((theta - centre) ** 2).sum()


def _pair_logps(logits: torch.Tensor, pairs: TabularPairs) -> tuple[torch.Tensor, torch.Tensor]:
    logps = logits.log_softmax(-1)
    return pick(logps, pairs.prompt, pairs.chosen), pick(logps, pairs.prompt, pairs.rejected)


def exact_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_0) averaged over prompts, summed over trials (differentiable)."""
    logp, logq = logits.log_softmax(-1), reference_logits.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean(-1).sum()


def fit_reward(oracle: TabularOracle, pairs: TabularPairs, ridge: float) -> torch.Tensor:
    """Bradley-Terry reward table (PAPER Eq. 9). -> (S, X, A)"""

    def loss(reward: torch.Tensor) -> torch.Tensor:
        chosen = pick(reward, pairs.prompt, pairs.chosen)
        rejected = pick(reward, pairs.prompt, pairs.rejected)
        return bradley_terry_loss(chosen, rejected).losses.sum() + _ridge(reward, 0.0, ridge)

    return minimise(loss, torch.zeros_like(oracle.target_logits))


def fit_pmle(oracle: TabularOracle, pairs: TabularPairs, ridge: float, beta: float = 0.0) -> torch.Tensor:
    """PMLE (PAPER Eqs. 4-5): the pairs' negative log-likelihood plus beta * n * exact KL(pi || pi_0)."""
    theta0, n = oracle.reference_logits, pairs.prompt.shape[1]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        value = pmle_loss(*_pair_logps(theta, pairs), gamma=oracle.gamma).losses.sum() + _ridge(theta, theta0, ridge)
        return value + beta * n * exact_kl(theta, theta0) if beta else value

    return minimise(loss, theta0)


def fit_distillation(oracle: TabularOracle, pairs: TabularPairs, reward: torch.Tensor, ridge: float) -> torch.Tensor:
    """Preference distillation (PAPER Eqs. 11-12) on the data's pairs (from mu), teacher ``reward`` (S, X, A)."""
    theta0 = oracle.reference_logits
    first = pick(reward, pairs.prompt, pairs.chosen)
    second = pick(reward, pairs.prompt, pairs.rejected)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        policy_first, policy_second = _pair_logps(theta, pairs)
        losses = distillation_loss(policy_first, policy_second, first, second, gamma=oracle.gamma).losses
        return losses.sum() + _ridge(theta, theta0, ridge)

    return minimise(loss, theta0)


def fit_dpo(oracle: TabularOracle, pairs: TabularPairs, beta: float, ridge: float) -> torch.Tensor:
    """DPO (PAPER Eq. 6)."""
    theta0 = oracle.reference_logits
    ref_chosen, ref_rejected = _pair_logps(theta0, pairs)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        losses = dpo_loss(*_pair_logps(theta, pairs), ref_chosen, ref_rejected, beta=beta).losses
        return losses.sum() + _ridge(theta, theta0, ridge)

    return minimise(loss, theta0)


def fit_regularised_reward_max(
    oracle: TabularOracle, reward: torch.Tensor, beta: float, entropy: float
) -> torch.Tensor:
    """Exact ``E_x [ -E_pi R - entropy * H(pi) + beta * KL(pi || pi_0) ]``: RLHF (entropy 0, PAPER Eq. 1) or
    reverse-KL minimisation (entropy = gamma, PAPER Eqs. 14-15). Optimum: pi ∝ pi_0^(b/(b+e)) exp(R/(b+e))."""
    theta0 = oracle.reference_logits
    logq = theta0.log_softmax(-1)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        logp = theta.log_softmax(-1)
        per_response = -reward + entropy * logp + beta * (logp - logq)
        return (logp.exp() * per_response).sum()  # summed over prompts: mean-scaled gradients stop L-BFGS early

    return minimise(loss, theta0)


def closed_form_reward_max(oracle: TabularOracle, reward: torch.Tensor, beta: float, entropy: float) -> torch.Tensor:
    """The optimum of ``fit_regularised_reward_max`` in closed form (logits)."""
    temperature = beta + entropy
    return (beta / temperature) * oracle.reference_logits.log_softmax(-1) + reward / temperature
