"""Parity with TRL 1.16's on-policy trainers (GRPO with every loss_type and option, RLOO): TRL's own
``_compute_loss`` and lit-align's ``experience_loss`` on the same crafted float64 per-token log-probs, advantages and
reference log-probs give the same loss, gradient and logged diagnostics (to 1e-6). The advantages themselves are
computed inside TRL's generation step; lit-align's are checked against the same expressions with TRL's ``nanstd``.
Needs ``pip install -e ".[parity]"`` (TRL, test-only)."""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.extended

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from support.onpolicy import fake_experience  # noqa: E402
from support.trl_parity import DTYPE, assert_close, config, token_logps, trainer, trl_metrics  # noqa: E402
from lit_align.losses import entropy_token_mask, group_advantages, normalized_advantages, rloo_advantages  # noqa: E402
from lit_align.objectives import GRPO, RLOO  # noqa: E402
from lit_align.objectives.onpolicy.group import GroupExperience  # noqa: E402
from lit_align.generation.rollout import SamplingConfig  # noqa: E402

LENGTHS = [3, 5, 2, 4, 6, 1, 4, 4]  # 8 responses: 2 prompts x 4, or 4 prompts x 2
WIDTH = max(LENGTHS)


def _mask():
    return (torch.arange(WIDTH)[None, :] < torch.tensor(LENGTHS)[:, None]).to(DTYPE)


def _crafted():
    mask = _mask()
    generator = torch.Generator().manual_seed(11)
    old = token_logps(mask, seed=3)[1]
    # the current policy a little off the sampling one, so that ratios leave the clip range on some tokens
    drift = (torch.randn(mask.shape, generator=generator, dtype=DTYPE) * 0.3) * mask
    reference = token_logps(mask, seed=4)[1]
    advantages = torch.tensor([1.2, -0.4, 0.3, -1.1, 0.8, -0.2, -0.6, 0.5], dtype=DTYPE)
    entropies = torch.rand(mask.shape, generator=generator, dtype=DTYPE) * 3 * mask
    return mask, old, drift, reference, advantages, entropies


def _leaf(old, drift, mask):
    leaf = (old + drift).detach().requires_grad_(True)
    return leaf, leaf * mask


GRPO_ROWS = [
    ("dapo", {}),
    ("grpo", {"loss_type": "grpo"}),
    ("dr_grpo", {"loss_type": "dr_grpo"}),
    ("bnpo", {"loss_type": "bnpo"}),
    ("epsilon_high", {"epsilon_high": 0.28}),
    ("beta bias-corrected", {"beta": 0.04}),
    ("beta plain k3", {"beta": 0.04, "use_bias_correction_kl": False}),
    ("sequence (GSPO)", {"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04}),
    ("delta", {"delta": 1.3}),
    ("cispo", {"loss_type": "cispo", "epsilon_high": 1.2}),
    ("sapo", {"loss_type": "sapo", "beta": 0.02}),
    ("luspo", {"loss_type": "luspo", "importance_sampling_level": "sequence"}),
    ("vespo", {"loss_type": "vespo"}),
    ("top_entropy_quantile", {"top_entropy_quantile": 0.4}),
]

def _trl_grpo(settings, mask, old, drift, reference, advantages, entropies):
    args = config(GRPOConfig, max_completion_length=WIDTH, **settings)
    leaf, logps = _leaf(old, drift, mask)
    n = mask.shape[0]
    ns = trainer(GRPOTrainer, args, torch.nn.Linear(1, 1), beta=args.beta, loss_type=args.loss_type,
                 epsilon_low=args.epsilon, epsilon_high=args.epsilon_high if args.epsilon_high is not None
                 else args.epsilon, importance_sampling_level=args.importance_sampling_level,
                 top_entropy_quantile=args.top_entropy_quantile, off_policy_mask_threshold=None, use_vllm=False,
                 vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
                 max_completion_length=WIDTH, _entropy_bonus_enabled=False)
    ns._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    ns.get_high_entropy_mask = types.MethodType(GRPOTrainer.get_high_entropy_mask, ns)
    ns.get_gamma_weights = GRPOTrainer.get_gamma_weights
    inputs = {"prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
              "completion_ids": torch.ones(n, WIDTH, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": reference,
              "num_items_in_batch": mask.sum()}
    loss = GRPOTrainer._compute_loss(ns, ns.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, trl_metrics(ns)


def _lit_grpo(settings, mask, old, drift, reference, advantages, entropies):
    names = {"epsilon": "epsilon_low"}
    kwargs = {names.get(k, k): v for k, v in settings.items()}
    module = GRPO(num_samples=4, sampling=SamplingConfig(max_new_tokens=WIDTH, temperature=1.0), **kwargs)
    leaf, logps = _leaf(old, drift, mask)
    module.policy_token_logps = lambda mb: logps
    token_mask = None
    if module.top_entropy_quantile < 1:
        token_mask = entropy_token_mask(entropies, mask.bool(), module.top_entropy_quantile)
    mb = fake_experience(torch.zeros(mask.shape[0]), old, reference, cls=GroupExperience, advantages=advantages,
                         token_mask=token_mask)
    mb.response_mask = mask.bool()
    loss, metrics = module.experience_loss(mb)
    loss.backward()
    return loss.detach(), leaf.grad, {k: v.item() for k, v in metrics.items()}


@pytest.mark.parametrize("settings", [row[1] for row in GRPO_ROWS], ids=[row[0] for row in GRPO_ROWS])
def test_grpo_trainer_loss(settings):
    crafted = _crafted()
    trl_loss, trl_grad, trl_logged = _trl_grpo(settings, *crafted)
    loss, grad, lit_logged = _lit_grpo(settings, *crafted)
    assert_close(loss, trl_loss, "loss")
    assert_close(grad, trl_grad, "gradient")
    compared = [name for name in trl_logged if name in lit_logged]
    assert compared or settings.get("loss_type") == "sapo"
    for name in compared:
        assert_close(lit_logged[name], trl_logged[name], name)
    # what TRL logs of the clipping and lit-align does not: the per-sequence extremes and the entropy
    assert set(trl_logged) - set(lit_logged) <= {"entropy", "clip_ratio/low_min", "clip_ratio/high_max"}


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_are_trls_expression(scale):
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.5, 3.0, 3.0, 3.0, 3.0], dtype=DTYPE)
    grouped = rewards.view(-1, 4)
    centred = rewards - grouped.mean(1).repeat_interleave(4)
    std = {"group": nanstd(grouped, dim=1).repeat_interleave(4), "batch": nanstd(rewards).expand_as(rewards),
           "none": None}[scale]
    expected = centred if std is None else centred / (std + 1e-4)
    assert_close(group_advantages(rewards, 4, scale), expected, "advantages")


def _trl_rloo(settings, mask, old, drift, advantages):
    args = config(RLOOConfig, **settings)
    leaf, logps = _leaf(old, drift, mask)
    n = mask.shape[0]
    ns = trainer(RLOOTrainer, args, torch.nn.Linear(1, 1), epsilon_low=args.epsilon,
                 epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon)
    ns._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
              "completion_ids": torch.ones(n, WIDTH, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_logps": (old * mask).sum(-1)}
    loss = RLOOTrainer._compute_loss(ns, ns.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, trl_metrics(ns)


@pytest.mark.parametrize("settings", [{}, {"epsilon": 0.1, "epsilon_high": 0.15}], ids=["default", "epsilon_high"])
def test_rloo_trainer_loss(settings):
    mask, old, drift, _, advantages, _ = _crafted()
    trl_loss, trl_grad, trl_logged = _trl_rloo(settings, mask, old, drift * 0.3, advantages)
    module = RLOO(kl_coef=0.0, num_samples=2, clip_range=settings.get("epsilon", 0.2),
                  epsilon_high=settings.get("epsilon_high"))
    leaf, logps = _leaf(old, drift * 0.3, mask)
    module.policy_token_logps = lambda mb: logps
    mb = fake_experience(torch.zeros(mask.shape[0]), old, None, cls=GroupExperience, advantages=advantages,
                         rlhf_reward=advantages, baseline=torch.zeros_like(advantages))
    mb.response_mask = mask.bool()
    loss, _ = module.experience_loss(mb)
    loss.backward()
    assert_close(loss.detach(), trl_loss, "loss")
    assert_close(leaf.grad, trl_grad, "gradient")


def test_rloo_advantages_are_trls_expression():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.5, 3.0, 3.0], dtype=DTYPE)
    grouped = rewards.view(-1, 2)
    baselines = ((grouped.sum(1, keepdim=True) - grouped) / 1).view(-1)
    assert_close(rloo_advantages(rewards, 2), rewards - baselines, "advantages")
    advantages = rewards - baselines
    expected = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    assert_close(normalized_advantages(advantages), expected, "normalize_advantages")


# -- online DPO: TRL's training_step with its generation, forward and reward calls replaced by crafted values ------

@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_online_dpo_training_step(loss_type):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from lit_align.objectives import OnlineDPO

    mask = _mask()  # 8 rows: TRL's first half (a1 of prompts 0..3) then second half (a2)
    old, drift, reference, _, _, _ = _crafted()
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0, 1.0, 2.0, 0.4], dtype=DTYPE)  # a tie at prompt 2
    args = config(OnlineDPOConfig, loss_type=loss_type, beta=[0.3], missing_eos_penalty=None)
    leaf, logps = _leaf(old, drift, mask)
    n, prompts = mask.shape[0], 4
    ns = trainer(OnlineDPOTrainer, args, torch.nn.Linear(1, 1), beta=0.3, ref_model=torch.nn.Linear(1, 1),
                 reward_funcs=[None], eos_token_ids=[2], stats=defaultdict(list),
                 processing_class=types.SimpleNamespace(batch_decode=lambda ids, **k: [""] * len(ids)))
    ids = torch.ones(n, WIDTH, dtype=torch.long)
    ns._generate = lambda model, p, images: (torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long),
                                             ids, mask.long(), None)
    ns._forward = lambda model, *a: logps if model is ns.model else reference * mask
    ns._calculate_rewards_from_functions = lambda **k: rewards
    ns.accelerator.backward = lambda loss, **k: loss.backward()
    trl_loss = OnlineDPOTrainer.training_step(ns, ns.model, {"prompt": ["x"] * prompts})
    trl_logged = {name: values[-1] for name, values in ns.stats.items()}

    module = OnlineDPO(beta=0.3, loss_type=loss_type)
    order = torch.stack([torch.arange(prompts), torch.arange(prompts) + prompts], 1).reshape(-1)  # a1, a2 per prompt
    lit_leaf, lit_logps = _leaf(old, drift, mask)
    module.policy_token_logps = lambda mb: lit_logps[order]
    mb = fake_experience(rewards[order], old[order], (reference * mask)[order])
    mb.response_mask = mask[order].bool()
    loss, metrics = module.experience_loss(mb)
    loss.backward()
    assert_close(loss.detach(), trl_loss, "loss")
    assert_close(lit_leaf.grad, leaf.grad, "gradient")
    lit_logged = {name: value.mean().item() for name, value in metrics.items()}
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected", "objective/scores_margin"):
        assert_close(lit_logged[name], trl_logged[name], name)
