"""RLOO and GRPO: the group losses worked by hand, their invariants, and both configs trained through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from support.cli import fit_args
from torch import nn

from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli
from lit_align.losses import (
    group_advantages,
    grpo_token_losses,
    leave_one_out_baseline,
    reduce_group_loss,
    returns_to_go,
    rloo_advantages,
    rloo_loss,
)
from lit_align.objectives import GRPO, RLOO
from lit_align.generation.rollout import SamplingConfig


class CountReward(nn.Module):
    """A rule-based reward: how often token 10 occurs in the sequence."""

    def forward(self, input_ids, attention_mask):
        return ((input_ids == 10) & attention_mask.bool()).float().sum(-1)


def prompts(tokenizer, texts=("What is a cat like?", "Describe the sea.")):
    """Left-padded prompt ids and mask, as PromptDataModule gives them."""
    ids = [tokenizer(t).input_ids for t in texts]
    length = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {"prompt_ids": torch.tensor([[pad] * (length - len(i)) + i for i in ids]),
            "prompt_mask": torch.tensor([[0] * (length - len(i)) + [1] * len(i) for i in ids]),
            "index": torch.arange(len(texts))}


# -- the losses, by hand -----------------------------------------------------------------------------------------

def test_leave_one_out_baseline_by_hand_and_excludes_the_sample_itself():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two prompts, k = 3
    # prompt 0: b = [(2 + 6)/2, (1 + 6)/2, (1 + 2)/2] = [4, 3.5, 1.5]; prompt 1: [1.5, 1.5, 0]
    torch.testing.assert_close(leave_one_out_baseline(rewards, 3), torch.tensor([4.0, 3.5, 1.5, 1.5, 1.5, 0.0]))
    changed = rewards.clone()
    changed[0] = 100.0  # sample 0's own reward never enters its baseline
    assert leave_one_out_baseline(changed, 3)[0] == 4.0
    advantages = rloo_advantages(rewards, 3)
    torch.testing.assert_close(advantages[:3], torch.tensor([-3.0, -1.5, 4.5]))
    torch.testing.assert_close(advantages.view(2, 3).sum(-1), torch.zeros(2))  # k/(k-1) (r - mean): sums to 0
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(rewards, 1)


def test_group_advantages_by_hand_and_sum_to_zero_per_group():
    rewards = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    # group [1, 2, 6]: mean 3, centred [-2, -1, 3], unbiased std sqrt(14 / 2) = sqrt(7); group [5, 5, 5]: all 0
    std = math.sqrt(7)
    expected = torch.tensor([-2 / std, -1 / std, 3 / std, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 3, "group", eps=0.0)[:3], expected[:3])
    torch.testing.assert_close(group_advantages(rewards, 3, "group"), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(group_advantages(rewards, 3, "none"), torch.tensor([-2.0, -1, 3, 0, 0, 0]))
    batch_std = rewards.std()
    torch.testing.assert_close(group_advantages(rewards, 3, "batch", eps=0.0),
                               torch.tensor([-2.0, -1, 3, 0, 0, 0]) / batch_std)
    for scale in ("group", "batch", "none"):
        sums = group_advantages(torch.randn(12), 4, scale).view(3, 4).sum(-1)
        torch.testing.assert_close(sums, torch.zeros(3), atol=1e-5, rtol=0)


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    # G_t over the response only: [-, 1 + 2 + 3, 2 + 3, 3, -]
    torch.testing.assert_close(returns_to_go(rewards, mask), torch.tensor([[0.0, 6.0, 5.0, 3.0, 0.0]]))


def test_rloo_loss_sequence_level_is_reinforce_at_the_sampling_weights():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    advantages = torch.tensor([2.0, -1.0])
    losses = rloo_loss(logps, logps.detach(), advantages, mask)
    torch.testing.assert_close(losses, torch.tensor([-2.0, 1.0]))  # -A * rho with rho = 1
    losses.sum().backward()
    # d/d ln pi_t of -A * exp(sum_t (ln pi_t - ln pi_old_t)) at rho = 1: -A for every token
    torch.testing.assert_close(logps.grad, torch.tensor([[-2.0, -2.0], [1.0, 1.0]]))


def test_rloo_loss_clips_the_sequence_ratio_and_sums_token_terms():
    mask = torch.ones(1, 2, dtype=torch.bool)
    old = torch.zeros(1, 2)
    # sequence ratio exp(0.5 + 0.5) = e = 2.718 > 1.2 with A = 1: -min(e, 1.2) = -1.2
    assert rloo_loss(torch.full((1, 2), 0.5), old, torch.tensor([1.0]), mask).item() == pytest.approx(-1.2)
    assert rloo_loss(torch.full((1, 2), 0.5), old, torch.tensor([1.0]), mask, None).item() == pytest.approx(-math.e)
    # token level: rho_t = e^0.1 = 1.10517 (inside the clip), A_t = [3, -1]: -(3 rho - rho) = -2 * 1.10517
    token = rloo_loss(torch.full((1, 2), 0.1), old, torch.tensor([[3.0, -1.0]]), mask)
    assert token.item() == pytest.approx(-2 * math.exp(0.1), rel=1e-6)


def test_grpo_token_losses_by_hand():
    # tokens: rho = 1.5 with A = 1 (clipped high to 1.2), rho = 0.5 with A = -1 (clipped low to 0.8), rho = 1
    logps = torch.log(torch.tensor([[1.5], [0.5], [1.0]]))
    old = torch.zeros(3, 1)
    mask = torch.ones(3, 1, dtype=torch.bool)
    out = grpo_token_losses(logps, old, torch.tensor([1.0, -1.0, 2.0]), mask, 0.2, 0.2)
    torch.testing.assert_close(out.losses, torch.tensor([[-1.2], [0.8], [-2.0]]))
    assert out.clipped_high.squeeze(-1).tolist() == [True, False, False]
    assert out.clipped_low.squeeze(-1).tolist() == [False, True, False]
    # asymmetric: epsilon_high 0.6 lets rho = 1.5 through: -1.5
    assert grpo_token_losses(logps, old, torch.tensor([1.0, -1.0, 2.0]), mask, 0.2, 0.6).losses[0, 0] == -1.5
    # k3 with ln pi = -1, ln pi_0 = -2: e^-1 - 1 + 1 = 0.3679, weighted by beta = 0.5, at rho = 1 and A = 0
    kl = grpo_token_losses(torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), torch.tensor([0.0]),
                           torch.ones(1, 1, dtype=torch.bool), ref_logps=torch.tensor([[-2.0]]), beta=0.5)
    torch.testing.assert_close(kl.losses, torch.tensor([[0.5 * math.exp(-1)]]))
    torch.testing.assert_close(kl.kl, torch.tensor([[math.exp(-1)]]))


def test_reduce_group_loss_by_hand():
    losses = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert reduce_group_loss(losses, mask, "grpo").item() == 2.0  # ((1 + 3)/2 + 2/1) / 2
    assert reduce_group_loss(losses, mask, "bnpo").item() == 2.0  # 6 / 3 tokens
    assert reduce_group_loss(losses, mask, "dapo", num_tokens=6).item() == 1.0  # 6 / 6 tokens over every rank
    assert reduce_group_loss(losses, mask, "dr_grpo", max_completion_length=4).item() == 0.75  # 6 / (2 * 4)
    long = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # grpo weighs a token of a short response more: both rows average 1, so 1; bnpo weighs every token the same
    assert reduce_group_loss(long, mask, "grpo").item() == 1.0


# -- the objectives ----------------------------------------------------------------------------------------------

SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0)


def test_grpo_reference_follows_beta():
    assert GRPO(reward_model=CountReward(), sampling=SAMPLING).policy.reference.name == "none"
    assert GRPO(beta=0.04, reward_model=CountReward(), sampling=SAMPLING).policy.reference.name == "copy"
    with pytest.raises(ValueError, match="GRPO with a KL weight above 0.*copy or lora"):
        GRPO(beta=0.04, reward_model=CountReward(), policy=PolicyWithReference(model="tiny", reference="none"))
    assert RLOO(kl_coef=0.0, reward_model=CountReward(), sampling=SAMPLING).policy.reference.name == "none"
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        RLOO(num_samples=1, reward_model=CountReward())


def test_grpo_experience_and_loss_match_an_independent_computation(tokenizer):
    torch.manual_seed(0)
    module = GRPO(beta=0.04, reward_model=CountReward(), sampling=SAMPLING, num_samples=4, loss_type="dapo")
    exp = module.make_experience(prompts(tokenizer))
    assert exp.advantages.shape == (8,) and exp.ref_logps is not None
    torch.testing.assert_close(exp.advantages.view(2, 4).sum(-1), torch.zeros(2), atol=1e-5, rtol=0)
    exp.advantages = torch.linspace(-1.0, 2.5, 8)  # not summing to 0: equal lengths cannot cancel the loss
    loss, metrics = module.experience_loss(exp)
    assert loss.abs() > 0.1
    # at the sampling weights rho = 1 and the policy equals pi_0 (k3 = 0): the token mean of -A over the batch
    mask = exp.response_mask
    expected = -(exp.advantages * mask.sum(-1)).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert metrics["kl"].abs() < 1e-6 and metrics["clip_ratio/region_mean"] == 0
    dr = GRPO(reward_model=CountReward(), sampling=SAMPLING, num_samples=4, loss_type="dr_grpo")
    assert dr.scale_rewards == "none" and module.scale_rewards == "group"


def test_grpo_top_entropy_quantile_masks_the_policy_term_to_high_entropy_response_tokens(tokenizer):
    torch.manual_seed(0)
    module = GRPO(reward_model=CountReward(), sampling=SAMPLING, num_samples=4, top_entropy_quantile=0.25)
    exp = module.make_experience(prompts(tokenizer))
    mask, kept = exp.response_mask, exp.token_mask
    assert not (kept & ~mask).any() and 0 < kept.sum() < mask.sum()
    assert abs(kept.sum().item() / mask.sum().item() - 0.25) < 0.1  # about the top quarter of the tokens
    exp.advantages = torch.linspace(-1.0, 2.5, 8)
    loss, _ = module.experience_loss(exp)
    # at the sampling weights rho = 1: only the kept tokens' -A, over every response token (dapo)
    expected = -(exp.advantages * kept.sum(-1)).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_rloo_refuses_normalized_token_level_advantages():
    with pytest.raises(ValueError, match="not with token_level"):
        RLOO(token_level=True, normalize_advantages=True, reward_model=CountReward())


def test_rloo_token_level_advantage_of_the_first_response_token_is_the_sequence_advantage(tokenizer):
    torch.manual_seed(0)
    sequence = RLOO(reward_model=CountReward(), sampling=SAMPLING, num_samples=3)
    token = RLOO(reward_model=CountReward(), sampling=SAMPLING, num_samples=3, token_level=True,
                 policy=sequence.policy)
    with torch.no_grad():  # move off pi_0 so that the KL shaping is not 0
        for p in sequence.policy.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    exp = sequence.make_experience(prompts(tokenizer))
    torch.manual_seed(1)
    token_exp = token.make_experience(prompts(tokenizer))
    assert torch.equal(exp.input_ids, token_exp.input_ids)
    kl = ((exp.old_logps - exp.ref_logps) * exp.response_mask).sum(-1)
    assert kl.abs().max() > 1e-3
    torch.testing.assert_close(exp.rlhf_reward, exp.scores - 0.05 * kl)
    torch.testing.assert_close(exp.advantages, rloo_advantages(exp.rlhf_reward, 3))
    first = exp.response_mask.long().argmax(-1)  # the first response token of each row
    torch.testing.assert_close(token_exp.advantages.gather(1, first[:, None]).squeeze(1), exp.advantages)
    assert (token_exp.advantages[~token_exp.response_mask] == 0).all()


@pytest.mark.parametrize("config, cls, extra", [
    ("rloo.yaml", RLOO, []),
    pytest.param("rloo.yaml", RLOO, ["--model.token_level=true"], marks=pytest.mark.extended),  # the variants: in
    ("grpo.yaml", GRPO, []),                                                                       # the extended step
    pytest.param("grpo.yaml", GRPO, ["--model.loss_type=dr_grpo"], marks=pytest.mark.extended),
    pytest.param("grpo.yaml", GRPO, ["--model.importance_correction={mode: sequence_mask, clip_max: 3.0}"],
                 marks=pytest.mark.extended),
])
def test_config_trains_two_steps(run_dir, config, cls, extra):
    cli = build_cli(fit_args(config, "--data.limit_rows=16", "--export.enabled=false",
                             "--trainer.log_every_n_steps=1", *extra, steps=2))
    module = cli.model
    assert type(module) is cls and cli.trainer.global_step == 2
    fresh = PolicyWithReference(model="tiny", reference="none").policy.state_dict()
    trained = module.policy.policy.state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)  # the policy trained
    assert "train/loss" in cli.trainer.logged_metrics and "train/reward_std" in cli.trainer.logged_metrics
    if cls is GRPO:
        assert module.policy.reference.name == "none" and "train/clip_ratio/region_mean" in cli.trainer.logged_metrics
    if module.importance_correction is not None:  # the Hugging Face engine samples what the trainer scores
        assert float(cli.trainer.logged_metrics["generation/is_ratio/max"]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_dapo_divides_by_the_mean_token_count_of_every_rank_and_bnpo_by_its_own(tokenizer, loss_type):
    from types import SimpleNamespace

    torch.manual_seed(0)
    module = GRPO(reward_model=CountReward(), sampling=SAMPLING, num_samples=4, loss_type=loss_type)
    exp = module.make_experience(prompts(tokenizer))
    exp.advantages = torch.linspace(0.5, 2.0, 8)  # all positive: a loss that cannot cancel to 0
    local, _ = module.experience_loss(exp)
    assert local.abs() > 0.1
    tokens = exp.response_mask.sum().float()
    # the other rank holds 3 times as many tokens: the mean count over both ranks is 2 * tokens
    module._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(
        reduce=lambda count, reduce_op: (count + 3 * tokens) / 2 if reduce_op == "mean" else None))
    try:
        distributed, _ = module.experience_loss(exp)
    finally:
        module._trainer = None
    expected = local / 2 if loss_type == "dapo" else local
    torch.testing.assert_close(distributed, expected, atol=1e-6, rtol=1e-5)
