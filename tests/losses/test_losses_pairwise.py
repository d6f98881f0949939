"""TRL's offline pairwise losses (lit_align/losses/pairwise.py) against hand-worked values, limits and invariants.

The shared example (as in test_losses_preference.py), with beta = 0.5 unless stated:
    ln pi(y+) = -1.0, ln pi(y-) = -2.0, ln pi0(y+) = ln pi0(y-) = -1.5
    h+ = 0.5, h- = -0.5, h = h+ - h- = 1.0;  beta h+ = 0.25, beta h- = -0.25, beta h = 0.5
    ln(1 + e^-0.5) = 0.4740770, ln(1 + e^0.5) = 0.9740770, ln(1 + e^-0.25) = 0.5759394, ln(1 + e^0.25) = 0.8259394
    s(0.25) = 0.5621765, s(0.5) = 0.6224593
"""

import math

import pytest
import torch

from lit_align.losses import (
    aot_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    dpo_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    length_desensitized_logps,
    length_normalized_dpo_loss,
    length_normalized_ipo_loss,
    nca_pair_loss,
    nll_loss,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
    sppo_hard_loss,
    wpo_weights,
)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def _example(grad=False):
    return t(-1.0, grad=grad), t(-2.0, grad=grad), t(-1.5), t(-1.5)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


# Losses of the four summed log-probs (and beta) only: the ones the invariants below run over.
REFERENCE_LOSSES = {
    "hinge": hinge_loss, "robust": robust_dpo_loss, "bco_pair": bco_pair_loss, "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss, "nca_pair": nca_pair_loss, "exo_pair": exo_pair_loss, "sppo_hard": sppo_hard_loss,
    "discopop": discopop_loss, "aot": aot_loss,
}
MARGIN_ONLY = ["hinge", "robust", "exo_pair", "discopop", "aot"]


@pytest.mark.parametrize("loss, expected", [
    # max(0, 1 - beta h) = 1 - 0.5
    (hinge_loss, 0.5),
    # ((1 - eps) l(0.5) - eps l(-0.5)) / (1 - 2 eps), eps = 0.1: (0.9 * 0.4740770 - 0.1 * 0.9740770) / 0.8
    (lambda *a, beta: robust_dpo_loss(*a, beta=beta, label_smoothing=0.1), 0.4115770),
    # batch mean reward delta = (0.25 - 0.25) / 2 = 0: -ln s(0.25) - ln s(0.25) = 2 * 0.5759394
    (bco_pair_loss, 1.1518788),
    # 1 - s(0.25) + s(-0.25) = 2 - 2 * 0.5621765
    (apo_zero_loss, 0.8756470),
    # s(0.25) + 1 - s(0.5) = 0.5621765 + 1 - 0.6224593
    (apo_down_loss, 0.9397172),
    # -ln s(0.25) - 1/2 ln s(-0.25) - 1/2 ln s(0.25) = 0.5759394 + 0.8259394 / 2 + 0.5759394 / 2
    (nca_pair_loss, 1.2768788),
    # (h+ - 1/(2 beta))^2 + (h- + 1/(2 beta))^2 = (0.5 - 1)^2 + (-0.5 + 1)^2
    (sppo_hard_loss, 0.5),
])
def test_hand_values(loss, expected):
    out = loss(*_example(), beta=0.5)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.25) and out.rejected_rewards.item() == pytest.approx(-0.25)


def test_exo_pair_is_the_reverse_kl_of_two_outcome_laws():
    # p_theta = (s(0.5), s(-0.5)) = (0.6224593, 0.3775407), p_data = (0.9, 0.1):
    # 0.6224593 ln(0.6224593 / 0.9) + 0.3775407 ln(0.3775407 / 0.1) = -0.2295128 + 0.5015677 = 0.2720548
    out = exo_pair_loss(*_example(), beta=0.5, label_smoothing=0.1)
    p = _sigmoid(0.5)
    assert out.losses.item() == pytest.approx(p * math.log(p / 0.9) + (1 - p) * math.log((1 - p) / 0.1))
    assert out.losses.item() == pytest.approx(0.2720548, abs=1e-6)
    # a KL: zero exactly where the policy's preference probability is the label's, s(beta h) = 1 - eps
    h = math.log(0.9 / 0.1) / 0.5
    at_target = exo_pair_loss(t(h), t(0.0), t(0.0), t(0.0), beta=0.5, label_smoothing=0.1)
    assert at_target.losses.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.all(exo_pair_loss(*(torch.randn(50) * 20 for _ in range(4)), beta=0.5, label_smoothing=0.1)
                     .losses >= -1e-6)
    with pytest.raises(ValueError):
        exo_pair_loss(*_example(), label_smoothing=0.0)


def test_discopop_mixes_logistic_and_exponential_by_the_margin():
    # rho = beta h = 0.5, tau = 0.05: w = s(10); (1 - w) ln(1 + e^-0.5) + w e^-0.5
    w = _sigmoid(10.0)
    expected = (1 - w) * math.log1p(math.exp(-0.5)) + w * math.exp(-0.5)
    assert discopop_loss(*_example(), beta=0.5, tau=0.05).losses.item() == pytest.approx(expected, abs=1e-9)
    # at rho = 0 the two halves weigh equally: (ln 2 + 1) / 2
    zero = discopop_loss(t(-1.0), t(-1.0), t(-1.0), t(-1.0))
    assert zero.losses.item() == pytest.approx((math.log(2) + 1) / 2)
    # tau -> 0: the logistic loss for negative margins, the exponential for positive ones
    assert discopop_loss(t(-3.0), t(-1.0), t(-1.0), t(-1.0), beta=1, tau=1e-4).losses.item() == pytest.approx(
        math.log1p(math.exp(2.0)))
    assert discopop_loss(t(-1.0), t(-3.0), t(-1.0), t(-1.0), beta=1, tau=1e-4).losses.item() == pytest.approx(
        math.exp(-2.0))


def test_simpo_hand_value():
    # mean log-probs -4/2 = -2 and -9/3 = -3; beta = 2, gamma = 0.5: z = 2 (-2) - 2 (-3) - 0.5 = 1.5
    out = simpo_loss(t(-4.0), t(-9.0), t(2), t(3), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1.5)))  # 0.2014133
    assert out.chosen_rewards.item() == -4.0 and out.rejected_rewards.item() == -6.0
    # a response's length counts: the same sums over equal lengths give z = 2 (-4 + 9) / 2 - 0.5 = 4.5
    assert simpo_loss(t(-4.0), t(-9.0), t(2), t(2)).losses.item() == pytest.approx(math.log1p(math.exp(-4.5)))


def test_orpo_hand_value():
    # two tokens each; P(y+) = 1/2 (mean ln = -ln 2), P(y-) = 1/4: odds 1 and 1/3, ln odds ratio = ln 3;
    # L_OR = -ln s(ln 3) = ln(4/3) = 0.2876821, L_SFT = ln 2 = 0.6931472; lam = 0.1: 0.6931472 + 0.0287682
    out = orpo_loss(t(-2 * math.log(2)), t(-2 * math.log(4)), t(2), t(2), lam=0.1)
    assert out.losses.item() == pytest.approx(0.7219154, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-0.1 * math.log(2))


def test_length_normalized_dpo_and_ipo_hand_values():
    # h+ / |y+| = (-4 + 6) / 2 = 1, h- / |y-| = (-9 + 6) / 3 = -1: DPO at beta = 0.5 is -ln s(1) = ln(1 + e^-1)
    args = t(-4.0), t(-9.0), t(-6.0), t(-6.0), t(2), t(3)
    assert length_normalized_dpo_loss(*args, beta=0.5).losses.item() == pytest.approx(math.log1p(math.exp(-1)))
    # IPO on the same per-token margin 2 with target 1/(2 tau) = 2 (tau = 0.25): 0; summed IPO: (5 - 2)^2 = 9
    assert length_normalized_ipo_loss(*args, tau=0.25).losses.item() == pytest.approx(0.0)
    assert ipo_loss(*args[:4], tau=0.25).losses.item() == pytest.approx(9.0)
    # one token each: plain DPO
    torch.testing.assert_close(length_normalized_dpo_loss(*_example(), t(1), t(1), beta=0.5).losses,
                               dpo_loss(*_example(), beta=0.5).losses)


def test_rpo_adds_the_chosen_nll():
    # DPO 0.4740770 + alpha * (-(-1) / 2) with alpha = 1
    out = rpo_loss(*_example(), t(2), beta=0.5, alpha=1.0)
    assert out.losses.item() == pytest.approx(0.9740770, abs=1e-6)
    torch.testing.assert_close(rpo_loss(*_example(), t(2), beta=0.5, alpha=0.0).losses,
                               dpo_loss(*_example(), beta=0.5).losses)
    assert nll_loss(t(-3.0), t(2)).item() == 1.5


def test_length_desensitized_logps():
    # l_p = 2: -1 - 2 + 0.5 * (-3) = -4.5, whether the completion starts at the first position or later
    tokens = t(-1.0, -2.0, -3.0, 0.0), t(0.0, -1.0, -2.0, -3.0)
    masks = torch.tensor([True, True, True, False]), torch.tensor([False, True, True, True])
    for values, mask in zip(tokens, masks):
        assert length_desensitized_logps(values[None], mask[None], torch.tensor([2]), 0.5).item() == -4.5
        # alpha = 1 is the plain sum; a public length beyond the response changes nothing
        assert length_desensitized_logps(values[None], mask[None], torch.tensor([2]), 1.0).item() == -6.0
        assert length_desensitized_logps(values[None], mask[None], torch.tensor([9]), 0.5).item() == -6.0


def test_wpo_weights():
    # chosen: two tokens of probability 1/2, rejected one of 1/4: unadjusted exp(ln 1/2) * exp(ln 1/4) = 1/8
    chosen, chosen_mask = torch.log(t(0.5, 0.5))[None], torch.tensor([[True, True]])
    rejected, rejected_mask = torch.log(t(0.25, 1.0))[None], torch.tensor([[True, False]])
    assert wpo_weights(chosen, chosen_mask, rejected, rejected_mask).item() == pytest.approx(0.125)
    # with sum_v pi(v)^2 of (1/2, 1/2) = 1/2 and of a uniform 4-way law = 1/4, each ratio is 1: weight 1
    norms_c, norms_r = torch.log(t(0.5, 0.5))[None], torch.log(t(0.25, 1.0))[None]
    assert wpo_weights(chosen, chosen_mask, rejected, rejected_mask, norms_c, norms_r).item() == pytest.approx(1.0)
    # clamped at 1 where a sampled token beats the greedy agreement
    assert wpo_weights(chosen, chosen_mask, rejected, rejected_mask, norms_c - 1, norms_r).item() == 1.0


def test_aot_compares_sorted_quantiles():
    # policy margins (3, -1), reference margins (0, 1): sorted (-1, 3) against (0, 1), z = (-1, 2) at beta = 1
    pc, pr, rc, rr = t(0.0, -1.0), t(-3.0, 0.0), t(0.0, 1.0), t(0.0, 0.0)
    out = aot_loss(pc, pr, rc, rr, beta=1.0)
    torch.testing.assert_close(out.losses, t(math.log1p(math.e), math.log1p(math.exp(-2))))
    # unpaired: sorted h+ (0, -2) -> (-2, 0) against sorted h- (-3, 0): z = (1, 0)
    torch.testing.assert_close(aot_loss(pc, pr, rc, rr, beta=1.0, paired=False).losses,
                               t(math.log1p(math.exp(-1)), math.log(2)))
    # the batch is a distribution: re-ordering its examples leaves the losses as they are; one pair is DPO
    order = torch.tensor([1, 0])
    torch.testing.assert_close(aot_loss(pc[order], pr[order], rc[order], rr[order], beta=1.0).losses, out.losses)
    torch.testing.assert_close(aot_loss(*_example(), beta=0.5).losses, dpo_loss(*_example(), beta=0.5).losses)


def test_robust_dpo_is_unbiased_for_flipped_labels():
    # E over a flip with probability eps of the robust loss is the clean DPO loss: (1-eps) L(h) + eps L(-h) = l(h)
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(20, dtype=torch.float64) * 5 for _ in range(4))
    eps = 0.3
    expected = (1 - eps) * robust_dpo_loss(pc, pr, rc, rr, 0.5, eps).losses + eps * robust_dpo_loss(
        pr, pc, rr, rc, 0.5, eps).losses
    torch.testing.assert_close(expected, dpo_loss(pc, pr, rc, rr, 0.5).losses)
    torch.testing.assert_close(robust_dpo_loss(pc, pr, rc, rr, 0.5, 0.0).losses, dpo_loss(pc, pr, rc, rr, 0.5).losses)
    with pytest.raises(ValueError):
        robust_dpo_loss(pc, pr, rc, rr, label_smoothing=0.5)


def test_bco_pair_reward_shift():
    # delta = 0.25 given: -ln s(0.25 - 0.25) - ln s(-(-0.25 - 0.25)) = ln 2 + ln(1 + e^-0.5)
    out = bco_pair_loss(*_example(), beta=0.5, reward_shift=0.25)
    assert out.losses.item() == pytest.approx(math.log(2) + 0.4740770, abs=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_only_log_ratios_matter(name):
    # adding c to ln pi and ln pi0 of a response leaves its log-ratio, and so every loss here, unchanged
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 3 for _ in range(4))
    c = torch.randn(8, dtype=torch.float64) * 10
    loss = REFERENCE_LOSSES[name]
    if name == "aot":  # paired AOT sorts policy and reference margins apart: only its unpaired form is of h+, h-
        loss = lambda *a: aot_loss(*a, paired=False)  # noqa: E731
    torch.testing.assert_close(loss(pc + c, pr, rc + c, rr).losses, loss(pc, pr, rc, rr).losses)


@pytest.mark.parametrize("name", MARGIN_ONLY)
def test_margin_only_losses_ignore_a_shift_of_both_responses(name):
    torch.manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 3 for _ in range(4))
    c = torch.randn(8, dtype=torch.float64) * 10
    loss = REFERENCE_LOSSES[name]
    torch.testing.assert_close(loss(pc + c, pr + c, rc, rr).losses, loss(pc, pr, rc, rr).losses)


@pytest.mark.parametrize("name", ["apo_zero", "nca_pair", "sppo_hard", "bco_pair"])
def test_anchored_losses_see_each_likelihood(name):
    # unlike DPO, these losses move when both responses gain the same log-ratio (the margin stays)
    pc, pr, rc, rr = _example()
    loss = REFERENCE_LOSSES[name]
    if name == "bco_pair":  # with the batch's own mean as the shift it is margin-only; a fixed shift is not
        loss = lambda *a: bco_pair_loss(*a, reward_shift=0.0)  # noqa: E731
    assert loss(pc + 1, pr + 1, rc, rr).losses.item() != pytest.approx(loss(pc, pr, rc, rr).losses.item())


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_gradients_raise_the_chosen_and_lower_the_rejected(name):
    pc, pr, rc, rr = _example(grad=True)
    REFERENCE_LOSSES[name](pc, pr, rc, rr, beta=0.5).losses.sum().backward()
    assert pr.grad.item() > 0  # descent lowers ln pi(y-)
    if name == "apo_down":  # APO-down lowers both: the chosen far less than the rejected
        assert 0 < pc.grad.item() < pr.grad.item() / 10
    elif name == "sppo_hard":  # its chosen log-ratio 0.5 is below the target 1/(2 beta) = 1
        assert pc.grad.item() == pytest.approx(2 * (0.5 - 1.0))
    else:
        assert pc.grad.item() < 0


def test_reference_free_gradients():
    pc, pr = t(-4.0, grad=True), t(-9.0, grad=True)
    (simpo_loss(pc, pr, t(2), t(3)).losses + orpo_loss(pc, pr, t(2), t(3)).losses).sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()
    # SLiC without a reference: the hinge on the policy's own margin; zero gradient once it clears 1/beta
    pc, pr = t(-1.0, grad=True), t(-12.0, grad=True)
    hinge_loss(pc, pr, beta=0.1).losses.sum().backward()
    assert pc.grad.item() == 0.0 and pr.grad.item() == 0.0


@pytest.mark.parametrize("name", MARGIN_ONLY[:-1])
def test_swapping_the_responses_of_a_symmetric_loss_is_negating_the_margin(name):
    # these are functions of h alone: swapping y+ and y- gives the value at -h, and the rewards swap
    loss = REFERENCE_LOSSES[name]
    pc, pr, rc, rr = _example()
    swapped = loss(pr, pc, rr, rc, beta=0.5)
    negated = loss(pc - 2.0, pr, rc, rr, beta=0.5)  # h = 1 - 2 = -1
    torch.testing.assert_close(swapped.losses, negated.losses)
    assert swapped.chosen_rewards.item() == pytest.approx(-0.25)
