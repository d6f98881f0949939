"""DPO, cDPO and IPO against values worked out by hand, plus the invariants every preference loss must keep.

Hand-worked example used below (beta = 0.5):
    policy  ln pi(a+) = -1.0, ln pi(a-) = -2.0;  reference ln pi0(a+) = -1.5, ln pi0(a-) = -1.5
    chosen log-ratio  = -1.0 - (-1.5) =  0.5;    rejected log-ratio = -2.0 - (-1.5) = -0.5
    h = 0.5 - (-0.5) = 1.0;  beta * h = 0.5
    DPO  = -ln s(0.5) = ln(1 + e^-0.5) = ln(1.6065307) = 0.4740770
    rewards: chosen = 0.5 * 0.5 = 0.25, rejected = 0.5 * -0.5 = -0.25
    cDPO (eps = 0.1) = 0.9 * ln(1 + e^-0.5) + 0.1 * ln(1 + e^0.5) = 0.9 * 0.4740770 + 0.1 * 0.9740770 = 0.5240770
    dDPO/d ln pi(a+) = -beta * s(-beta h) = -0.5 * 0.3775407 = -0.1887703  (and +0.1887703 for ln pi(a-))
    IPO (tau = 0.25): target 1 / (2 tau) = 2, loss = (1 - 2)^2 = 1, dIPO/d ln pi(a+) = 2 (h - 2) = -2
    IPO (tau = 0.5): target 1, loss = 0
"""

import math

import pytest
import torch

from lit_align.losses import dpo_loss, ipo_loss


def _example(requires_grad=False):
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=requires_grad)
    pr = torch.tensor([-2.0], dtype=torch.float64, requires_grad=requires_grad)
    rc = torch.tensor([-1.5], dtype=torch.float64)
    rr = torch.tensor([-1.5], dtype=torch.float64)
    return pc, pr, rc, rr


def test_dpo_hand_value_and_rewards():
    out = dpo_loss(*_example(), beta=0.5)
    assert out.losses.item() == pytest.approx(0.4740770, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.25)
    assert out.rejected_rewards.item() == pytest.approx(-0.25)


def test_cdpo_label_smoothing_hand_value():
    out = dpo_loss(*_example(), beta=0.5, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx(0.5240770, abs=1e-6)


def test_ipo_hand_values():
    assert ipo_loss(*_example(), tau=0.25).losses.item() == pytest.approx(1.0)
    assert ipo_loss(*_example(), tau=0.5).losses.item() == pytest.approx(0.0, abs=1e-12)


def test_policy_equal_reference_gives_ln2_and_zero_rewards():
    torch.manual_seed(0)
    chosen, rejected = -torch.rand(5) * 30, -torch.rand(5) * 30
    out = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    torch.testing.assert_close(out.losses, torch.full((5,), math.log(2.0)))
    assert torch.all(out.chosen_rewards == 0) and torch.all(out.rejected_rewards == 0)
    # cDPO at h = 0 is ln 2 whatever the smoothing; IPO at h = 0 is (1 / (2 tau))^2
    torch.testing.assert_close(dpo_loss(chosen, rejected, chosen, rejected, 0.1, 0.3).losses,
                               torch.full((5,), math.log(2.0)))
    torch.testing.assert_close(ipo_loss(chosen, rejected, chosen, rejected, tau=0.25).losses, torch.full((5,), 4.0))


def test_swapping_chosen_and_rejected_flips_the_margin():
    torch.manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(6) * 10 for _ in range(4))
    for loss_fn, kwargs in ((dpo_loss, {"beta": 0.3}), (ipo_loss, {"tau": 0.2})):
        fwd = loss_fn(pc, pr, rc, rr, **kwargs)
        bwd = loss_fn(pr, pc, rr, rc, **kwargs)
        torch.testing.assert_close(fwd.chosen_rewards - fwd.rejected_rewards,
                                   -(bwd.chosen_rewards - bwd.rejected_rewards))
    # DPO: l(h) - l(-h) = -h*beta  (ln s(x) - ln s(-x) = x), so the two losses differ by exactly the scaled margin
    fwd, bwd = dpo_loss(pc, pr, rc, rr, beta=0.3), dpo_loss(pr, pc, rr, rc, beta=0.3)
    torch.testing.assert_close(fwd.losses - bwd.losses, -(fwd.chosen_rewards - fwd.rejected_rewards))


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr, rc, rr = _example(requires_grad=True)
    dpo_loss(pc, pr, rc, rr, beta=0.5).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1887703, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.1887703, abs=1e-6)


def test_ipo_gradient_sign_and_value():
    pc, pr, rc, rr = _example(requires_grad=True)
    ipo_loss(pc, pr, rc, rr, tau=0.25).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-2.0)
    assert pr.grad.item() == pytest.approx(2.0)


def test_rewards_are_detached_and_losses_per_example():
    pc, pr, rc, rr = (torch.full((3,), -1.0, requires_grad=True) for _ in range(4))
    for out in (dpo_loss(pc, pr, rc, rr), ipo_loss(pc, pr, rc, rr)):
        assert out.losses.shape == (3,) and out.losses.requires_grad
        assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
