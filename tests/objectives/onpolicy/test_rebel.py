"""REBEL (PAPER 3, Eq. 10): the loss, its fixed point, the shaped rewards, and a CLI fit."""

from __future__ import annotations

import torch
from support.cli import fit_args
from support.onpolicy import assert_only_policy_changed, fake_experience, state

from lit_align.cli.app import build_cli
from lit_align.losses import distillation_loss, rebel_loss
from lit_align.objectives import REBEL
from lit_align.rewards.model import load_reward_model
from lit_align.generation.rollout import SamplingConfig
from support.onpolicy import LengthReward


def test_rebel_loss_hand_worked():
    """ln pi = (-2, -5), ln pi_t = (-3, -4): predicted margin (−2 + 3) − (−5 + 4) = 2; rewards (1.5, 0.5),
    eta = 0.5: target 0.5; loss (2 − 0.5)^2 = 2.25. Second pair: pi = pi_t, equal rewards: loss 0."""
    out = rebel_loss(torch.tensor([-2.0, -1.0]), torch.tensor([-5.0, -1.0]), torch.tensor([-3.0, -1.0]),
                     torch.tensor([-4.0, -1.0]), torch.tensor([1.5, 0.0]), torch.tensor([0.5, 0.0]), eta=0.5)
    torch.testing.assert_close(out.losses, torch.tensor([2.25, 0.0]))
    torch.testing.assert_close(out.predictions, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(out.targets, torch.tensor([0.5, 0.0]))


def test_rebel_shares_the_distillation_fixed_point():
    """With pi_t(a1) = pi_t(a2) and eta = 1 / gamma, REBEL's gradient vanishes exactly where distillation's does,
    gamma (ln pi(a1) - ln pi(a2)) = r1 - r2; half a unit away both are non-zero and push the same way."""
    gamma, r1, r2, old = 0.25, torch.tensor([1.2]), torch.tensor([0.2]), torch.tensor([-3.0])
    for offset, at_fixed_point in ((0.0, True), (0.5, False)):
        grads = []
        for loss in ("rebel", "distill"):
            l1 = torch.tensor([-2.0 + (r1 - r2).item() / gamma + offset], requires_grad=True)
            l2 = torch.tensor([-2.0])
            if loss == "rebel":
                value = rebel_loss(l1, l2, old, old, r1, r2, eta=1 / gamma).losses
            else:
                value = distillation_loss(l1, l2, r1, r2, gamma).losses
            value.sum().backward()
            grads.append(l1.grad.item())
        if at_fixed_point:
            assert abs(grads[0]) < 1e-5 and abs(grads[1]) < 1e-6
        else:
            assert grads[0] > 1e-3 and grads[1] > 1e-3


def test_rebel_rewards_are_kl_shaped():
    """kl_coef = 0.5: r = R - 0.5 (ln pi_t - ln pi_0) = [0.5, 1.0, -0.5, -0.25] (fake_experience), so with
    ln pi = ln pi_t the loss is (eta (r1 - r2))^2 = [(1 * -0.5)^2, (1 * -0.25)^2] = [0.25, 0.0625]."""
    module = REBEL(reward_model=LengthReward(), kl_coef=0.5, eta=1.0)
    exp = fake_experience()
    losses, metrics = module.pair_loss(exp, exp.old_logps.sum(-1))
    torch.testing.assert_close(losses, torch.tensor([0.25, 0.0625]))
    torch.testing.assert_close(metrics["rebel/reward_margin"], torch.tensor([-0.5, -0.25]))


def test_rebel_defaults_penalise_a_missing_eos():
    """PAPER 3: a response without EOS gets reward -1; REBEL takes 4 passes over each batch."""
    module = REBEL(reward_model=LengthReward(), sampling=SamplingConfig(max_new_tokens=2))
    assert module.missing_eos_penalty == -1.0 and module.epochs_per_batch == 4


def test_rebel_fit_through_the_cli(run_dir):
    """A short fit of configs/rebel.yaml: 2 batches x 4 passes, the policy moves, reference and reward model
    stay bit-identical."""
    cli = build_cli(fit_args("rebel.yaml", "--model.reward_model=tiny", "--data.limit_rows=32",
                             "--data.batch_size=4", "--model.sampling.max_new_tokens=6", steps=8))
    assert cli.trainer.global_step == 8
    assert_only_policy_changed(cli.model)
    fresh = state(load_reward_model("tiny"))
    assert all(torch.equal(v, fresh[k]) for k, v in state(cli.model.reward_model).items())


def test_float64_rewards_keep_their_precision():
    """The regression target stays in the rewards' dtype when it is wider than float32 (float64 in, float64 out,
    equal to the float64 formula to 1e-12); narrower ones are computed in float32."""
    g = torch.Generator().manual_seed(1)
    l1, l2, o1, o2, r1, r2 = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(6))
    out = rebel_loss(l1, l2, o1, o2, r1, r2, eta=0.7)
    assert out.targets.dtype == out.losses.dtype == torch.float64
    torch.testing.assert_close(out.losses, ((l1 - o1) - (l2 - o2) - 0.7 * (r1 - r2)) ** 2, atol=1e-12, rtol=1e-12)
    assert rebel_loss(l1.float(), l2.float(), o1.float(), o2.float(), r1.half(), r2.half()).targets.dtype == torch.float32
