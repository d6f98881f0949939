"""The TRL options added as pure losses, against hand-worked values (the style of test_losses_pairwise.py):
DPO's f-divergences, the NLL's token and example means, BCO without a shift, TRL's rewards of the length-normalised
losses, KTO's apo_zero_unpaired, GRPO's cispo/sapo/luspo/vespo, sequence-level ratios, two-sided clipping, the
bias-corrected k3 and entropy masks, RLOO's epsilon_high and normalised advantages."""

import math

import pytest
import torch

from lit_align.losses import (
    bco_pair_loss, dpo_loss, entropy_token_mask, f_divergence_scores, grpo_token_losses, kto_loss,
    length_normalized_dpo_loss, length_normalized_ipo_loss, normalized_advantages, nll_loss, reduce_group_loss,
    rloo_loss, sequence_log_ratio, vespo_weights,
)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_f_divergence_scores_hand_values():
    log_ratio = t(math.log(2))
    assert f_divergence_scores(log_ratio).item() == pytest.approx(math.log(2))
    assert f_divergence_scores(log_ratio, "forward_kl").item() == pytest.approx(0.5)
    assert f_divergence_scores(log_ratio, "js_divergence").item() == pytest.approx(math.log(4 / 3))
    assert f_divergence_scores(log_ratio, "alpha_divergence", 0.5).item() == pytest.approx(0.5857864)
    assert f_divergence_scores(log_ratio, "alpha_divergence", 1.0).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="f_divergence_type"):
        f_divergence_scores(log_ratio, "hellinger")


def test_dpo_with_forward_kl_hand_value_and_rewards_of_the_log_ratios():
    # h+ = ln 2, h- = -ln 2: forward scores 1 - 1/2 = 0.5 and 1 - 2 = -1; margin 1.5, beta 0.5: -ln s(0.75)
    out = dpo_loss(t(math.log(2)), t(-math.log(2)), t(0.0), t(0.0), beta=0.5, f_divergence="forward_kl")
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.75)))
    assert out.chosen_rewards.item() == pytest.approx(0.5 * math.log(2))  # beta times the log-ratio (TRL's)


def test_nll_token_and_example_means():
    logps, lengths = t(-3.0, -1.0), torch.tensor([2, 1])
    torch.testing.assert_close(nll_loss(logps, lengths, "token"), t(2.0, 2 / 3))  # mean 4/3 = 4 tokens' NLL / 3
    torch.testing.assert_close(nll_loss(logps, lengths, "example"), t(1.5, 1.0))
    equal = torch.tensor([2, 2])
    torch.testing.assert_close(nll_loss(logps, equal, "token"), nll_loss(logps, equal, "example"))


def test_bco_pair_without_a_shift_by_default():
    # beta h+ = 0.25, beta h- = -0.25: ln(1 + e^-0.25) twice = 2 * 0.5759394
    out = bco_pair_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert out.losses.item() == pytest.approx(2 * 0.5759394)


def test_length_normalized_losses_log_rewards_of_summed_log_ratios():
    # h+ = 0.5 over 2 tokens, h- = -0.5 over 1 token; rewards beta (resp. tau) times 0.5 and -0.5
    args = (t(-1.0), t(-2.0), t(-1.5), t(-1.5), torch.tensor([2]), torch.tensor([1]))
    out = length_normalized_dpo_loss(*args, beta=0.5)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.5 * 0.75)))  # per-token margin 0.25 + 0.5
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.25, -0.25))
    ipo = length_normalized_ipo_loss(*args, tau=0.25)
    assert ipo.losses.item() == pytest.approx((0.75 - 2) ** 2)
    assert (ipo.chosen_rewards.item(), ipo.rejected_rewards.item()) == pytest.approx((0.125, -0.125))


def test_kto_apo_zero_unpaired_hand_values():
    out = kto_loss(t(0.0, 0.0), t(-2.0, -2.0), torch.tensor([True, False]), reference_point=5.0, beta=0.5,
                   loss_type="apo_zero_unpaired")  # r = 2: 1 - s(1) and s(1), z0 ignored
    torch.testing.assert_close(out.losses, t(1 - 0.7310586, 0.7310586))


def _one_token(ratio, advantage, **kwargs):
    logps = torch.tensor([[math.log(ratio) - 1.0]], dtype=torch.float64, requires_grad=True)
    out = grpo_token_losses(logps, t(-1.0).reshape(1, 1), t(advantage), torch.ones(1, 1, dtype=torch.bool), **kwargs)
    out.losses.sum().backward()
    return out, logps.grad.item()


def test_cispo_caps_the_weight_not_the_update():
    # rho = 2, cap 1.5, A = 1, ln pi = ln 2 - 1: value -1.5 (ln 2 - 1), gradient -1.5 in ln pi
    out, grad = _one_token(2.0, 1.0, loss_type="cispo", epsilon_high=1.5)
    assert out.losses.item() == pytest.approx(-1.5 * (math.log(2) - 1))
    assert grad == pytest.approx(-1.5) and out.clipped_high.item()


def test_sapo_soft_gate():
    # rho = 1, tau = 1, A = 1: -4 s(0) = -2, d/d ln pi = -4 s'(0) rho = -1
    out, grad = _one_token(1.0, 1.0, loss_type="sapo")
    assert out.losses.item() == pytest.approx(-2.0) and grad == pytest.approx(-1.0)
    # A < 0 uses the negative temperature 1.05: 4/1.05 s(0) = 1.9047619
    assert _one_token(1.0, -1.0, loss_type="sapo")[0].losses.item() == pytest.approx(2 / 1.05)


def test_two_sided_clipping_caps_the_unclipped_ratio():
    # A = -1, rho = 3: plain -min(-3, -1.2) = 3; delta 2 caps it at 2
    assert _one_token(3.0, -1.0)[0].losses.item() == pytest.approx(3.0)
    assert _one_token(3.0, -1.0, delta=2.0)[0].losses.item() == pytest.approx(2.0)


def test_bias_corrected_k3_is_weighted_by_the_ratio():
    # ln pi = ln 2 - 1, ln pi0 = -1: k3 = 1/2 - ln(1/2) - 1 = 0.1931472; rho = 2 doubles it; A = 0
    kwargs = {"ref_logps": t(-1.0).reshape(1, 1), "beta": 1.0}
    plain, _ = _one_token(2.0, 0.0, bias_corrected_kl=False, **kwargs)
    corrected, _ = _one_token(2.0, 0.0, **kwargs)
    assert plain.losses.item() == pytest.approx(0.1931472) and corrected.losses.item() == pytest.approx(0.3862944)


def test_sequence_level_ratio_and_luspo_reduction():
    logps, old = t(0.2, 0.4, 9.0).reshape(1, 3), t(0.0, 0.0, 0.0).reshape(1, 3)
    mask = torch.tensor([[True, True, False]])
    assert sequence_log_ratio(logps, old, mask).item() == pytest.approx(0.3)
    losses = t(1.0, 3.0, 2.0, 0.0).reshape(2, 2)
    assert reduce_group_loss(losses, torch.tensor([[1, 1], [1, 0]]), "luspo").item() == pytest.approx(3.0)


def test_vespo_weight_is_one_at_the_sampling_policy():
    weights = vespo_weights(torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3), t(1.0, -1.0).reshape(2, 1))
    torch.testing.assert_close(weights, t(1.0, 1.0).reshape(2, 1))


def test_entropy_mask_keeps_the_top_quantile():
    entropies = t(0.1, 0.5, 0.9, 0.3).reshape(1, 4)
    mask = entropy_token_mask(entropies, torch.ones(1, 4, dtype=torch.bool), 0.5)  # threshold: the median 0.4
    assert mask.tolist() == [[False, True, True, False]]


def test_rloo_epsilon_high_and_normalized_advantages():
    logps, old, mask = t(math.log(1.5)).reshape(1, 1), t(0.0).reshape(1, 1), torch.ones(1, 1)
    assert rloo_loss(logps, old, t(1.0), mask, 0.2).item() == pytest.approx(-1.2)
    assert rloo_loss(logps, old, t(1.0), mask, 0.2, clip_high=0.3).item() == pytest.approx(-1.3)
    torch.testing.assert_close(normalized_advantages(t(-3.0, -1.5, 4.5)), t(-0.7559, -0.3780, 1.1339), atol=1e-4,
                               rtol=0)
