"""Reverse-KL minimisation and RLHF recover their closed-form optima on an enumerable case (PAPER 2d).

3 prompts x 5 one-token responses, a tabular softmax policy, and exact expectations over the policy instead of
samples. Each iteration builds the experience the trainer builds (per-token rewards from ``ppo_token_rewards``
with pi_old = the current policy, advantages from ``generalized_advantages`` with the exact value
V(x) = E_{pi_old} r as baseline), then takes two clipped PPO steps (``ppo_policy_loss``) on it, the loss weighted by
pi_old(a|x) instead of averaged over samples. The optima:

    reverse KL  min -E R - gamma H(pi) + beta KL(pi||pi0):  pi ∝ pi0^(beta/(beta+gamma)) exp(R/(beta+gamma))
    RLHF        min -E R + (beta+gamma) KL(pi||pi0):        pi ∝ pi0 exp(R/(beta+gamma))

(Set the derivative of sum_a pi(a)[R(a) - beta ln(pi(a)/pi0(a)) - gamma ln pi(a)] under sum_a pi(a) = 1 to zero:
R - (beta+gamma) ln pi + beta ln pi0 = const.)
"""

from __future__ import annotations

import torch

from lit_align.losses import (
    future_entropy_rewards,
    generalized_advantages,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    whitening_scale,
)

PROMPTS, RESPONSES = 3, 5
BETA, GAMMA = 0.2, 0.3


def _problem():
    g = torch.Generator().manual_seed(0)
    ref_logps = torch.log_softmax(1.5 * torch.randn(PROMPTS, RESPONSES, generator=g), -1)  # a peaked pi0
    scores = torch.randn(PROMPTS, RESPONSES, generator=g)
    return ref_logps, scores


def _optimise(kl_coef: float, entropy_coef: float, entropy_bonus: float = 0.0, iterations: int = 600) -> torch.Tensor:
    ref_logps, scores = _problem()
    theta = ref_logps.clone().requires_grad_(True)  # start at pi0, as training does
    optimizer = torch.optim.SGD([theta], lr=5.0)
    mask = torch.ones(PROMPTS * RESPONSES, 1, dtype=torch.bool)  # every response is one token
    for _ in range(iterations):
        old_logps = torch.log_softmax(theta.detach(), -1)
        pi_old = old_logps.exp()
        rewards = ppo_token_rewards(scores.reshape(-1), old_logps.reshape(-1, 1), ref_logps.reshape(-1, 1), mask,
                                    kl_coef=kl_coef, entropy_coef=entropy_coef).rewards  # (15, 1)
        values = (pi_old * rewards.view(PROMPTS, RESPONSES)).sum(-1, keepdim=True).expand(-1, RESPONSES)
        advantages, _ = generalized_advantages(rewards, values.reshape(-1, 1), mask, discount=1.0, lam=0.95)
        for _ in range(2):  # PPO epochs on the same experience: the ratio moves away from 1 and clipping matters
            logps = torch.log_softmax(theta, -1)
            out = ppo_policy_loss(logps.reshape(-1, 1), old_logps.reshape(-1, 1), advantages, mask, clip_range=0.2)
            loss = (pi_old.reshape(-1, 1) * out.losses).sum() / PROMPTS  # exact E_{a ~ pi_old}, mean over prompts
            if entropy_bonus:
                loss = loss + entropy_bonus * (logps.exp() * logps).sum(-1).mean()  # - bonus * H(pi)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.softmax(theta.detach(), -1)


def _closed_form(prior_power: float, temperature: float) -> torch.Tensor:
    ref_logps, scores = _problem()
    return torch.softmax(prior_power * ref_logps + scores / temperature, -1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


def test_reverse_kl_recovers_prior_smoothed_optimum():
    alpha = BETA / (BETA + GAMMA)
    learned = _optimise(kl_coef=BETA, entropy_coef=GAMMA)
    torch.testing.assert_close(learned, _closed_form(alpha, BETA + GAMMA), atol=2e-4, rtol=0)


def test_rlhf_at_the_same_temperature_recovers_unsmoothed_optimum():
    # without the entropy term the small probabilities of the peaked pi0 move slowly: more iterations
    learned = _optimise(kl_coef=BETA + GAMMA, entropy_coef=0.0, iterations=1500)
    torch.testing.assert_close(learned, _closed_form(1.0, BETA + GAMMA), atol=2e-4, rtol=0)
    # the two optima are far apart: the tolerance above separates them
    smoothed = _closed_form(BETA / (BETA + GAMMA), BETA + GAMMA)
    assert (learned - smoothed).abs().max() > 0.1


def test_prior_smoothing_without_reward():
    """R = 0: RLHF's optimum is pi0 itself, reverse KL's is pi0^alpha renormalised, strictly flatter (higher
    entropy) than pi0 for alpha < 1 whenever pi0 is not uniform."""
    ref_logps, _ = _problem()
    smoothed = torch.softmax(BETA / (BETA + GAMMA) * ref_logps, -1)
    assert (_entropy(smoothed) > _entropy(ref_logps.exp())).all()


def test_entropy_bonus_option_has_the_same_optimum():
    """The alternative: no per-token entropy reward, an exact entropy bonus gamma * H(pi) in the loss instead."""
    learned = _optimise(kl_coef=BETA, entropy_coef=0.0, entropy_bonus=GAMMA)
    torch.testing.assert_close(learned, _closed_form(BETA / (BETA + GAMMA), BETA + GAMMA), atol=2e-4, rtol=0)


# -- entropy_mode: bonus, with whitening and on two-token responses -----------------------------------------------
# 2 prompts x 3 tokens x 2 positions (9 responses of fixed length 2 per prompt): a tabular policy with logits for the
# first token and, per first token, for the second. This is how ReverseKL's bonus mode builds its update: per-token
# rewards (score and KL penalty) plus the entropy of the next state (``future_entropy_rewards``), both whitened, and
# the exact per-token entropy in the loss multiplied by the whitening factor (``whitening_scale``).

VOCAB, LENGTH, SEQ_PROMPTS = 3, 2, 2
SEQS = torch.tensor([(a, b) for a in range(VOCAB) for b in range(VOCAB)])  # (9, 2)


def _two_token_problem():
    g = torch.Generator().manual_seed(3)
    ref_first = 1.5 * torch.randn(SEQ_PROMPTS, VOCAB, generator=g)
    ref_second = 1.5 * torch.randn(SEQ_PROMPTS, VOCAB, VOCAB, generator=g)
    scores = torch.randn(SEQ_PROMPTS, len(SEQS), generator=g)
    return ref_first, ref_second, scores


def _per_token(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs (prompts, 9, 2) of every sequence and the entropies (prompts, 9, 2) of its two states."""
    lp1, lp2 = first.log_softmax(-1), second.log_softmax(-1)  # (P, V), (P, V, V)
    a, b = SEQS[:, 0], SEQS[:, 1]
    logps = torch.stack([lp1[:, a], lp2[:, a, b]], -1)
    h1, h2 = -(lp1.exp() * lp1).sum(-1), -(lp2.exp() * lp2).sum(-1)  # (P,), (P, V)
    entropies = torch.stack([h1[:, None].expand(-1, len(SEQS)), h2[:, a]], -1)
    return logps, entropies


def _optimise_bonus(exact_bonus: bool, iterations: int = 700) -> torch.Tensor:
    ref_first, ref_second, scores = _two_token_problem()
    first = ref_first.clone().requires_grad_(True)
    second = ref_second.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([first, second], lr=2.0)
    ref_logps, _ = _per_token(ref_first, ref_second)
    mask = torch.ones(SEQ_PROMPTS * len(SEQS), LENGTH, dtype=torch.bool)
    for _ in range(iterations):
        old_logps, old_entropies = (t.detach().reshape(-1, LENGTH) for t in _per_token(first, second))
        weight = old_logps.sum(-1).exp() / SEQ_PROMPTS  # pi_old(sequence), mean over prompts
        rewards = ppo_token_rewards(scores.reshape(-1), old_logps, ref_logps.reshape(-1, LENGTH), mask,
                                    kl_coef=BETA, entropy_coef=0.0).rewards
        if exact_bonus:
            rewards = rewards + future_entropy_rewards(old_entropies, mask, GAMMA)
        scale = whitening_scale(rewards, mask)
        rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, _ = generalized_advantages(rewards, torch.zeros_like(rewards), mask, discount=1.0, lam=1.0)
        scale = scale * whitening_scale(advantages, mask)
        advantages = masked_whiten(advantages, mask)
        for _ in range(2):
            logps, entropies = (t.reshape(-1, LENGTH) for t in _per_token(first, second))
            out = ppo_policy_loss(logps, old_logps, advantages, mask, clip_range=0.2)
            bonus = GAMMA * (scale if exact_bonus else 1.0) * entropies.sum(-1)
            loss = (weight * (out.losses.sum(-1) - bonus)).sum()  # exact E_{pi_old}
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    logps, _ = _per_token(first.detach(), second.detach())
    return logps.sum(-1).exp()  # (prompts, 9) probabilities of the sequences


def test_entropy_bonus_with_whitening_on_two_token_responses_recovers_the_optimum():
    """Sequence-level optimum pi(y) ∝ pi0(y)^alpha exp(R(y)/(beta+gamma)), with H the entropy of whole responses.

    Without the whitening factor on the bonus and the next-state entropy rewards (the bonus alone, as before)
    the update converges elsewhere: max |pi - optimum| 0.16 against 4e-4 here."""
    ref_first, ref_second, scores = _two_token_problem()
    ref_seq, _ = _per_token(ref_first, ref_second)
    optimum = torch.softmax(BETA / (BETA + GAMMA) * ref_seq.sum(-1) + scores / (BETA + GAMMA), -1)
    learned = _optimise_bonus(exact_bonus=True)
    torch.testing.assert_close(learned, optimum, atol=1e-3, rtol=0)
    naive = _optimise_bonus(exact_bonus=False, iterations=300)
    assert (naive - optimum).abs().max() > 0.05
