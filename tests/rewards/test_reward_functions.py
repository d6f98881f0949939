"""Reward functions of the decoded text, named by import path, in place of a reward model."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from support.cli import fit_args

from lit_align.cli.app import build_cli
from lit_align.objectives import GRPO
from lit_align.rewards.dispatch import FunctionReward
from lit_align.rewards.functions import RewardFunction, RewardFunctions, is_function_path, reward_functions_of
from lit_align.generation.rollout import Rollout, SamplingConfig

CALLS: list[tuple[list[str], list[str]]] = []


def letter_e(prompts: list[str], responses: list[str]) -> list[float]:
    """How many times 'e' occurs in the response (a rule-based reward, as a user writes one)."""
    CALLS.append((prompts, responses))
    return [float(r.count("e")) for r in responses]


def prompt_length(prompts: list[str], responses: list[str]) -> list[float | None]:
    """The prompt's length in characters, with no opinion (None) on empty responses."""
    return [float(len(p)) if r else None for p, r in zip(prompts, responses)]


# Copied unchanged from TRL's GRPOTrainer documentation (reward functions with TRL's signature)
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def stepped(completions, trainer_state=None, log_metric=None, **kwargs):
    """TRL's reward-shaping hooks: the trainer's step and a metric of its own."""
    log_metric("stepped/longest", max(len(c) for c in completions))
    return [float(trainer_state.global_step)] * len(completions)


def rows(tokenizer, pairs) -> Rollout:
    """Right-padded prompt + response rows with their masks, one prompt each."""
    encoded = [(tokenizer(p, add_special_tokens=False).input_ids, tokenizer(r, add_special_tokens=False).input_ids
                + [tokenizer.eos_token_id]) for p, r in pairs]
    length = max(len(p) + len(r) for p, r in encoded)
    ids = torch.full((len(pairs), length), tokenizer.pad_token_id)
    attention = torch.zeros(len(pairs), length, dtype=torch.long)
    completion = torch.zeros(len(pairs), length, dtype=torch.long)
    for i, (p, r) in enumerate(encoded):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attention[i, :len(p) + len(r)] = 1
        completion[i, len(p):len(p) + len(r)] = 1
    return Rollout(ids, attention, completion, 0, torch.ones(len(pairs), dtype=torch.bool), torch.arange(len(pairs)))


def test_which_sources_are_function_paths(tmp_path):
    assert is_function_path("my_module.my_reward") and is_function_path("pkg.sub.fn")
    assert not is_function_path("tiny")  # the embedded reward model
    assert not is_function_path("runs/reward/hf_model") and not is_function_path("org/model")
    assert not is_function_path("reward.ckpt")
    (tmp_path / "local.model").mkdir()
    assert not is_function_path(str(tmp_path / "local.model"))
    assert reward_functions_of("tiny") is None and reward_functions_of(None) is None


def test_weighted_sum_of_functions_on_decoded_text(tokenizer):
    sampled = rows(tokenizer, [("Tell me:", " the sea"), ("Hi", " eee")])
    functions = RewardFunctions([RewardFunction("test_reward_functions.letter_e", weight=2.0),
                                 "test_reward_functions.prompt_length"])
    CALLS.clear()
    rewards = FunctionReward(functions, tokenizer)(sampled)
    (prompts, responses), = CALLS
    assert prompts == ["Tell me:", "Hi"] and responses == [" the sea", " eee"]  # EOS skipped
    # 2 * count('e') + len(prompt): 2 * 2 + 8 = 12 and 2 * 3 + 2 = 8
    torch.testing.assert_close(rewards, torch.tensor([12.0, 8.0]))


def test_trl_signature_plain_and_conversational_with_per_function_metrics(tokenizer):
    answer = "<think>x</think><answer>4</answer>"
    sampled = rows(tokenizer, [("Q:", answer), ("Q:", " no tags here")])
    functions = RewardFunctions([RewardFunction("test_reward_functions.reward_len"),
                                 RewardFunction("test_reward_functions.format_reward_func", weight=2.0,
                                                conversational=True)])
    lengths = [-abs(20 - len(answer)), -abs(20 - len(" no tags here"))]
    torch.testing.assert_close(FunctionReward(functions, tokenizer)(sampled),
                               torch.tensor([lengths[0] + 2.0, float(lengths[1])]))
    metrics = functions.metrics()
    assert set(metrics) == {"rewards/reward_len/mean", "rewards/reward_len/std", "rewards/format_reward_func/mean",
                            "rewards/format_reward_func/std"}
    torch.testing.assert_close(metrics["rewards/format_reward_func/mean"], torch.tensor([1.0, 0.0]))  # unweighted
    torch.testing.assert_close(metrics["rewards/reward_len/std"], torch.tensor(lengths, dtype=torch.float32).std())
    # TRL's trainer_state and log_metric
    hooks = RewardFunctions([stepped])
    owner = SimpleNamespace(global_step=3, current_epoch=0, _trainer=SimpleNamespace(max_steps=10))
    torch.testing.assert_close(FunctionReward(hooks, tokenizer, owner)(sampled), torch.tensor([3.0, 3.0]))
    assert hooks.metrics()["stepped/longest"].tolist() == [float(len(answer))]
    # a callable given in code (as TRL's reward_funcs=[reward_len]) is the same function
    in_code = RewardFunctions([reward_len])
    torch.testing.assert_close(FunctionReward(in_code, tokenizer)(sampled), torch.tensor(lengths, dtype=torch.float32))


def test_none_leaves_the_other_functions_reward(tokenizer):
    sampled = rows(tokenizer, [("Hi", "")])
    sampled.completion_mask[:] = 0  # no response tokens at all
    functions = RewardFunctions(["test_reward_functions.letter_e", "test_reward_functions.prompt_length"])
    torch.testing.assert_close(FunctionReward(functions, tokenizer)(sampled), torch.tensor([0.0]))  # 0 + (None)


def test_a_wrong_path_or_length_is_named():
    with pytest.raises(ValueError, match="test_reward_functions.missing.*cannot be imported"):
        RewardFunction("test_reward_functions.missing")
    with pytest.raises(ValueError, match="'test_reward_functions.CALLS' is a list"):
        RewardFunction("test_reward_functions.CALLS")
    with pytest.raises(TypeError, match="not a Linear: give a reward model on its own"):
        RewardFunctions(["test_reward_functions.letter_e", torch.nn.Linear(1, 1)])
    with pytest.raises(ValueError, match="returned 1 rewards for 2"):
        RewardFunction("test_reward_functions.one_value")(["a", "b"], ["a", "b"])


def one_value(prompts, responses):
    return [1.0]


def test_objective_scores_its_samples_with_the_function(tokenizer):
    module = GRPO(reward_model="test_reward_functions.letter_e", num_samples=2,
                  sampling=SamplingConfig(max_new_tokens=8, temperature=1.0))
    assert isinstance(module.reward_model, RewardFunctions) and module.hparams.reward_model == \
        "test_reward_functions.letter_e"
    ids = tokenizer("Describe the sea.").input_ids
    exp = module.make_experience({"prompt_ids": torch.tensor([ids]), "prompt_mask": torch.ones(1, len(ids),
                                                                                               dtype=torch.long),
                                  "index": torch.tensor([0])})
    responses = [tokenizer.decode(exp.input_ids[i][exp.completion_mask[i].bool()], skip_special_tokens=True)
                 for i in range(2)]
    torch.testing.assert_close(exp.scores, torch.tensor([float(r.count("e")) for r in responses]))


WEIGHTED = ('[{"class_path": "lit_align.rewards.functions.RewardFunction", "init_args": {"path": '
            '"test_reward_functions.letter_e", "weight": 2.0}}, "test_reward_functions.prompt_length"]')


@pytest.mark.parametrize("reward_model", ["[test_reward_functions.letter_e, test_reward_functions.reward_len]",
                                          pytest.param(WEIGHTED, marks=pytest.mark.extended)])
def test_config_trains_on_reward_functions_without_a_reward_stage(run_dir, reward_model):
    """A reward function copied from TRL's docs (reward_len) trains GRPO unchanged, beside one of lit-align's."""
    cli = build_cli(fit_args("grpo.yaml", "--data.limit_rows=16", "--export.enabled=false",
                             f"--model.reward_model={reward_model}", steps=2))
    assert cli.trainer.global_step == 2 and isinstance(cli.model.reward_model, RewardFunctions)
    weights = [(f.path, f.weight) for f in cli.model.reward_model.functions]
    second = "test_reward_functions.prompt_length" if reward_model is WEIGHTED else "test_reward_functions.reward_len"
    assert weights == [("test_reward_functions.letter_e", 2.0 if reward_model is WEIGHTED else 1.0), (second, 1.0)]
    logged = cli.trainer.logged_metrics
    for name in ("letter_e", second.rpartition(".")[2]):  # TRL's per-function names beside the total
        assert {f"train/rewards/{name}/mean", f"train/rewards/{name}/std"} <= set(logged)
    assert "train/objective/scores" in logged and "train/learning_rate" in logged
    assert not (run_dir / "runs/test/reward_model").exists()  # no reward model was trained
