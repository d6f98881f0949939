"""RLHF (PPO) and ReverseKL: experience, the gamma = 0 identity, and short fits through the CLI."""

from __future__ import annotations

import csv
import dataclasses
import glob

import pytest
import torch
from torch import nn

from support.cli import fit_args
from lit_align.cli.app import build_cli
from lit_align.data.collate import PromptCollator
from lit_align.data.formats import Example
from lit_align.objectives import RLHF, ReverseKL
from lit_align.policy.with_reference import PolicyWithReference


class EvenTokenReward(nn.Module):
    """A deterministic stand-in reward model: a quarter of the number of even token ids in the sequence.

    Dense (about half of a random policy's tokens are even) and easy to increase, so the mean score of a short
    run rises reliably; the prompt's share is the same for every response to it.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return ((input_ids % 2 == 0) & attention_mask.bool()).float().sum(-1) / 4


def _prompts(tokenizer):
    examples = [Example(0, [1, 40, 41, 42], []), Example(1, [1, 43], []), Example(2, [1, 44, 45], [])]
    return PromptCollator(tokenizer.pad_token_id)(examples)


def _module(cls, **kwargs):
    from lit_align.generation.rollout import SamplingConfig

    return cls(reward_model=EvenTokenReward(), policy=PolicyWithReference(), sampling=SamplingConfig(max_new_tokens=6),
               **kwargs)


def test_experience_shapes_and_values(tokenizer):
    module = _module(RLHF, whiten_rewards=False, whiten_advantages=False)
    torch.manual_seed(0)
    exp = module.make_experience(_prompts(tokenizer))
    mask = exp.response_mask
    assert exp.values.shape == exp.advantages.shape == exp.old_logps.shape == mask.shape
    assert exp.values[mask].eq(0).all()  # the zero-initialised value head
    # with V = 0, discount 1 and lambda 0.95: the advantage of the last token is its reward, and returns = advantages
    torch.testing.assert_close(exp.returns, exp.advantages)
    # the non-score rewards are -beta * (ln pi_old - ln pi_0), zero at step 0 where pi == pi_0
    assert exp.non_score_rewards.abs().max() < 1e-5
    torch.testing.assert_close(exp.rewards.sum(-1), exp.scores, atol=1e-5, rtol=0)
    loss, metrics = module.experience_loss(exp)
    assert torch.isfinite(loss)
    assert metrics["policy/clipfrac"].sum() == 0  # the first update starts at ratio 1
    loss.backward()
    assert module.value_head.weight.grad.abs().sum() > 0


def test_reverse_kl_with_zero_gamma_is_rlhf(tokenizer):
    batch = _prompts(tokenizer)
    outputs = []
    for module in (_module(RLHF), _module(ReverseKL, entropy_coef=0.0)):
        torch.manual_seed(0)
        exp = module.make_experience(batch)
        outputs.append((exp, module.experience_loss(exp)[0]))
    (rlhf_exp, rlhf_loss), (rkl_exp, rkl_loss) = outputs
    assert type(rlhf_exp) is type(rkl_exp)
    for field in dataclasses.fields(rlhf_exp):
        ours, theirs = getattr(rlhf_exp, field.name), getattr(rkl_exp, field.name)
        if isinstance(ours, torch.Tensor):
            assert torch.equal(ours, theirs), field.name
    assert torch.equal(rlhf_loss, rkl_loss)


def test_reverse_kl_adds_the_entropy_reward(tokenizer):
    """Unwhitened, the rewards differ from RLHF's by exactly -gamma * ln pi_old on every response token."""
    batch = _prompts(tokenizer)
    exps = []
    for module in (_module(RLHF, whiten_rewards=False), _module(ReverseKL, entropy_coef=0.3, whiten_rewards=False)):
        torch.manual_seed(0)
        exps.append(module.make_experience(batch))
    rlhf, rkl = exps
    assert torch.equal(rlhf.input_ids, rkl.input_ids)
    torch.testing.assert_close(rkl.rewards - rlhf.rewards, -0.3 * rlhf.old_logps)


def test_entropy_bonus_enters_the_loss(tokenizer):
    module = _module(ReverseKL, entropy_coef=0.5, entropy_mode="bonus")
    torch.manual_seed(0)
    exp = module.make_experience(_prompts(tokenizer))
    loss, metrics = module.experience_loss(exp)
    assert metrics["policy/entropy"] > 0
    # the bonus is multiplied by the factor the whitening applied to the advantages (rewards, then advantages)
    scale = exp.advantage_scale[0]
    assert 0 < scale.item() != pytest.approx(1.0)
    torch.testing.assert_close(loss, metrics["loss/policy"] + 0.1 * metrics["loss/value"]
                               - 0.5 * scale * metrics["policy/entropy"])


def _score_curve(run_dir):
    rows = list(csv.DictReader(open(sorted(glob.glob(f"{run_dir}/logs/*/metrics.csv"))[-1])))
    return [float(r["train/objective/scores"]) for r in rows if r.get("train/objective/scores")]


@pytest.mark.parametrize("config", ["rlhf.yaml", "rkl.yaml"])
def test_fit_raises_reward_and_keeps_reference(run_dir, config):
    args = fit_args(
        config, '--model.reward_model={"class_path": "test_rlhf.EvenTokenReward"}', "--trainer.log_every_n_steps=1",
        "--model.sampling.max_new_tokens=8", "--data.batch_size=8", "--trainer.limit_val_batches=0",
        "--model.learning_rate=1e-2",  # a few steps of a random tiny model: a large rate makes the rise reliable
        steps=96,  # 24 batches of prompts, 4 PPO epochs each
    )
    cli = build_cli(args)
    scores = _score_curve("runs/test")
    assert len(scores) == 24
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4  # the score is a quarter of the even tokens
    assert last > first + 0.3, scores
    fresh = PolicyWithReference().reference.weights.state_dict()
    for key, value in cli.model.policy.reference.weights.state_dict().items():
        assert torch.equal(value, fresh[key]), key
    assert any(not torch.equal(v, fresh[k]) for k, v in cli.model.policy.policy.state_dict().items())


def test_paper_defaults_for_a_real_run():
    """Without a config the PPO objectives run the paper's TL;DR settings: -1 for a response without EOS, 4 PPO
    epochs, samples at temperature 0.7 with up to 53 new tokens."""
    for cls in (RLHF, ReverseKL):
        module = cls(reward_model=EvenTokenReward())
        assert module.missing_eos_penalty == -1.0 and module.epochs_per_batch == 4 and module.mini_batches == 1
        assert (module.sampling.temperature, module.sampling.max_new_tokens, module.sampling.min_new_tokens) == (
            0.7, 53, 0)
        assert module.kl_coef == 0.05 and module.clip_range == 0.2 and module.vf_coef == 0.1
    assert ReverseKL(reward_model=EvenTokenReward()).entropy_coef == 0.01


def _documented_args(cls) -> dict[str, str]:
    """The Google-style ``Args:`` entries of a class docstring: name -> text."""
    import inspect
    import re

    doc = inspect.getdoc(cls)
    block = doc.split("Args:\n", 1)[1]
    entries, name = {}, None
    for line in block.splitlines():
        match = re.match(r"^    (\w+): (.*)", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2)
        elif line.startswith("        ") and name:
            entries[name] += " " + line.strip()
        elif line.strip():
            break
    return entries


def test_class_defaults_name_their_source():
    """Every default of the on-policy and paper objectives is the paper's value or the field's standard, and the
    argument's docstring says which (PAPER ... / TRL ... / Hugging Face ...)."""
    import inspect

    from lit_align.objectives import DPO, IPO, PMLE, REBEL, PreferenceDistillation
    from lit_align.objectives.base import AlignmentModule
    from lit_align.objectives.onpolicy.base import OnPolicyObjective
    from lit_align.objectives.onpolicy.sampled_pairs import SampledPairObjective

    no_value = {"reward_model", "reward_stage", "policy", "optimizer", "lr_scheduler"}  # inputs, not tuning values
    missing = []
    for cls in (AlignmentModule, DPO, IPO, OnPolicyObjective, RLHF, ReverseKL, SampledPairObjective, REBEL,
                PreferenceDistillation, PMLE):
        docs = _documented_args(cls)
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.default is inspect.Parameter.empty or name in no_value:
                continue
            text = docs.get(name, "")
            if not any(source in text for source in ("PAPER", "TRL", "Hugging Face")):
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"defaults without a stated source: {missing}"


def test_greedy_sampling_is_refused_in_one_line():
    from lit_align.errors import UserError
    from lit_align.objectives import PMLE, REBEL, PreferenceDistillation
    from lit_align.generation.rollout import SamplingConfig

    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    for cls in (RLHF, ReverseKL, REBEL, PreferenceDistillation):
        with pytest.raises(UserError, match=rf"^{cls.__name__}: sampling.temperature=0 is greedy decoding"):
            cls(reward_model=EvenTokenReward(), sampling=greedy)
    with pytest.raises(UserError, match=r"^PMLE with beta > 0: sampling.temperature=0"):
        PMLE(beta=0.1, sampling=greedy)
    PMLE(beta=0.0, sampling=greedy, policy=PolicyWithReference(reference="none"))  # no samples are drawn


def test_cli_refuses_greedy_on_policy_training(run_dir, capsys, monkeypatch):
    from support.cli import run_main

    monkeypatch.delenv("LIT_ALIGN_DEBUG", raising=False)
    status = run_main(fit_args("rlhf.yaml", "--model.sampling.temperature=0", steps=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    errors = [line for line in err if line.startswith("lit-align: error:")]
    assert errors == [err[-2]] and "RLHF: sampling.temperature=0 is greedy decoding" in errors[0], err[-3:]
