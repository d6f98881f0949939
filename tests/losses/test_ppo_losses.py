"""PPO maths with values worked out by hand (each docstring shows the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.losses import (
    generalized_advantages,
    kl_penalty,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
)

T = torch.tensor


def test_gae_two_tokens():
    """discount 1, lam 0.5, r = (0, 1), V = (0.5, 0.2), V after the end = 0:
    delta_1 = 1 + 0 - 0.2 = 0.8, delta_0 = 0 + 0.2 - 0.5 = -0.3; A_1 = 0.8, A_0 = -0.3 + 0.5 * 0.8 = 0.1;
    returns = A + V = (0.6, 1.0)."""
    adv, ret = generalized_advantages(T([[0.0, 1.0]]), T([[0.5, 0.2]]), T([[True, True]]), discount=1.0, lam=0.5)
    torch.testing.assert_close(adv, T([[0.1, 0.8]]))
    torch.testing.assert_close(ret, T([[0.6, 1.0]]))


def test_gae_discount_and_masks():
    """Row layout [prompt, a, b, c, pad], discount 0.9, lam 1 (Monte-Carlo), V = 0 on the response, r = (.., 1, 0, 2, ..):
    A_c = 2, A_b = 0 + 0.9 * 2 = 1.8, A_a = 1 + 0.9 * 1.8 = 2.62. Prompt and padding positions are zero, and a
    value on a padding position (5.0, garbage) must not leak into the last token."""
    mask = T([[False, True, True, True, False]])
    rewards = T([[7.0, 1.0, 0.0, 2.0, 0.0]])
    values = T([[3.0, 0.0, 0.0, 0.0, 5.0]])
    adv, ret = generalized_advantages(rewards, values, mask, discount=0.9, lam=1.0)
    torch.testing.assert_close(adv, T([[0.0, 2.62, 1.8, 2.0, 0.0]]))
    torch.testing.assert_close(ret, adv)


def test_gae_lambda_zero_is_one_step_td():
    """lam = 0: A_t = r_t + V_{t+1} - V_t. r = (1, 2, 3), V = (1, 1, 1): A = (1, 2, 2)."""
    adv, _ = generalized_advantages(T([[1.0, 2.0, 3.0]]), T([[1.0, 1.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool),
                                    discount=1.0, lam=0.0)
    torch.testing.assert_close(adv, T([[1.0, 2.0, 2.0]]))


def test_clipped_policy_loss_by_hand():
    """eps = 0.2. Token 1: A = 1, rho = 1.5 -> max(-1.5, -1.2) = -1.2, clipped. Token 2: A = -1, rho = 1.5 ->
    max(1.5, 1.2) = 1.5, not clipped. Token 3: A = 2, rho = 1 -> -2, not clipped, approxkl 0. Token 4 masked."""
    logps = T([[math.log(1.5), math.log(1.5), -1.0, 3.0]])
    old = T([[0.0, 0.0, -1.0, 0.0]])
    adv = T([[1.0, -1.0, 2.0, 5.0]])
    mask = T([[True, True, True, False]])
    out = ppo_policy_loss(logps, old, adv, mask, clip_range=0.2)
    torch.testing.assert_close(out.losses, T([[-1.2, 1.5, -2.0, 0.0]]))
    torch.testing.assert_close(out.clipped, T([[1.0, 0.0, 0.0, 0.0]]))
    half_sq = 0.5 * math.log(1.5) ** 2
    torch.testing.assert_close(out.approx_kl, T([[half_sq, half_sq, 0.0, 0.0]]))


def test_clipped_policy_loss_gradient_vanishes_when_clipped():
    """A = 1 and rho = 1.5 > 1.2: the clipped branch is constant, so no gradient; at rho = 1 the gradient of
    -A * rho with respect to ln pi is -A = -1."""
    logps = T([[math.log(1.5), 0.0]]).requires_grad_(True)
    out = ppo_policy_loss(logps, T([[0.0, 0.0]]), T([[1.0, 1.0]]), T([[True, True]]), clip_range=0.2)
    out.losses.sum().backward()
    torch.testing.assert_close(logps.grad, T([[0.0, -1.0]]))


def test_clipped_value_loss_by_hand():
    """eps = 0.2, V_old = 0. Token 1: V = 0.5, G = 1: V_clip = 0.2, 0.5 max(0.25, 0.64) = 0.32, clipped.
    Token 2: V = 0.1, G = 1: V_clip = 0.1, 0.5 * 0.81 = 0.405, not clipped. Token 3: V = 0.5, G = 0:
    V_clip = 0.2, 0.5 max(0.25, 0.04) = 0.125, not clipped."""
    out = ppo_value_loss(T([[0.5, 0.1, 0.5]]), torch.zeros(1, 3), T([[1.0, 1.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool),
                         clip_range=0.2)
    torch.testing.assert_close(out.losses, T([[0.32, 0.405, 0.125]]))
    torch.testing.assert_close(out.clipped, T([[1.0, 0.0, 0.0]]))


def test_kl_estimators():
    """ln pi = -1, ln pi0 = -2: k1 = 1; k3 = (e^-1 - 1) + 1 = e^-1. Equal log-probs: both 0."""
    torch.testing.assert_close(kl_penalty(T([-1.0, -1.0]), T([-2.0, -1.0]), "k1"), T([1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(T([-1.0, -1.0]), T([-2.0, -1.0]), "k3"), T([math.exp(-1), 0.0]))
    with pytest.raises(ValueError):
        kl_penalty(T([0.0]), T([0.0]), "k2")


def test_token_rewards_score_at_last_token():
    """Row [prompt, a, b, pad]; ln pi_old = (., -1, -0.5, .), ln pi0 = (., -2, -0.5, .), beta 0.5, gamma 0.1, R = 1:
    token a: -0.5 * 1 + 0.1 = -0.4; token b: -0.5 * 0 + 0.05 + R = 1.05; prompt and padding 0."""
    mask = T([[False, True, True, False]])
    out = ppo_token_rewards(T([1.0]), T([[0.0, -1.0, -0.5, 0.0]]), T([[0.0, -2.0, -0.5, 0.0]]), mask,
                            kl_coef=0.5, entropy_coef=0.1)
    torch.testing.assert_close(out.rewards, T([[0.0, -0.4, 1.05, 0.0]]))
    torch.testing.assert_close(out.non_score_rewards, T([[0.0, -0.4, 0.05, 0.0]]))
    torch.testing.assert_close(out.kl, T([[0.0, 1.0, 0.0, 0.0]]))


def test_masked_whiten():
    """Values (1, 3) on the mask, 100 off it: mean 2, unbiased variance 2 -> (-1/sqrt2, 1/sqrt2); without
    shifting the mean: (2 - 1/sqrt2, 2 + 1/sqrt2); off the mask 0."""
    values, mask = T([[1.0, 3.0, 100.0]]), T([[True, True, False]])
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(masked_whiten(values, mask), T([[-s, s, 0.0]]))
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), T([[2 - s, 2 + s, 0.0]]))


def test_whitening_scale_and_future_entropy_rewards_by_hand():
    """Docstring examples: values (1, 3) have unbiased variance 2, so whitening multiplies them by 1/sqrt(2);
    entropies (0.5, 0.2, 0.9) on the mask (1, 1, 0) with coefficient 0.1 give rewards (0.1 * 0.2, 0, 0): the
    first token leads to the state of entropy 0.2, the second to no response state."""
    from lit_align.losses import future_entropy_rewards, whitening_scale

    values, mask = torch.tensor([[1.0, 3.0]]), torch.ones(1, 2, dtype=torch.bool)
    assert whitening_scale(values, mask).item() == pytest.approx(2 ** -0.5, rel=1e-6)
    torch.testing.assert_close(masked_whiten(values, mask), torch.tensor([[-0.7071068, 0.7071068]]))
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), torch.tensor([[1.2928932, 2.7071068]]))
    rewards = future_entropy_rewards(torch.tensor([[0.5, 0.2, 0.9]]), torch.tensor([[1, 1, 0]]), 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.02, 0.0, 0.0]]))
