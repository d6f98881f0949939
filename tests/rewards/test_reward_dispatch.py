"""One reward dispatch (lit_align/rewards/dispatch.py): what an objective is given as its reward -> one ``Reward`` that
scores rollouts; a reward model of another tokenizer reads the prompt's messages rendered by its own template."""

from __future__ import annotations

import pytest
import torch
from support.chat_templates import family_tokenizer

from lit_align.evaluation.judges import Judge, RewardModelJudge, Verdict
from lit_align.generation.rollout import Rollout
from lit_align.rewards.dispatch import (
    FunctionReward, JudgeReward, ModelReward, RetokenizedReward, build_reward, rollout_texts,
)
from lit_align.rewards.functions import RewardFunction

CHAT = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Describe the rain."}]
SEEN: list = []


def response_length(prompts, responses):
    return [float(len(r)) for r in responses]


def chat_prompts(completions, prompts, **kwargs):
    """TRL's conversational form: records the prompts it is given."""
    SEEN.append(prompts)
    return [0.0] * len(completions)


class Reader(torch.nn.Module):
    """A reward model that keeps the ids it reads and scores each row by its number of tokens."""

    def __init__(self, tokenizer=None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[list[int]]] = []

    def forward(self, input_ids, attention_mask):
        self.seen.append([row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)])
        return attention_mask.sum(-1).float()


class Recording(Judge):
    def __init__(self, reads_messages: bool) -> None:
        self.reads_messages = reads_messages
        self.prompts: list = []

    def compare_batch(self, prompts, responses, references):
        self.prompts += prompts
        return [Verdict(0.75) for _ in prompts]


def rollout(tokenizer, prompts: list[list[int]], responses: list[str], messages=None, samples: int = 1) -> Rollout:
    """Left-padded prompts (each repeated ``samples`` times), then the responses + EOS right-padded."""
    prompts = [p for p in prompts for _ in range(samples)]
    answers = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in responses]
    width_p, width_r = max(map(len, prompts)), max(map(len, answers))
    ids = torch.full((len(prompts), width_p + width_r), tokenizer.pad_token_id, dtype=torch.long)
    mask, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(prompts, answers)):
        ids[row, width_p - len(p): width_p + len(r)] = torch.tensor(p + r)
        mask[row, width_p - len(p): width_p + len(r)] = 1
        completion[row, width_p: width_p + len(r)] = 1
    index = torch.arange(len(prompts)) // samples
    return Rollout(ids, mask, completion, width_p, torch.ones(len(prompts), dtype=torch.bool), index,
                   prompt_messages=messages)


def test_dispatch_picks_the_kind_of_each_spec(tokenizer):
    policy, other = family_tokenizer("chatml"), family_tokenizer("llama3")
    for spec in ("test_reward_dispatch.response_length", ["test_reward_dispatch.response_length"] * 2,
                 RewardFunction("test_reward_dispatch.response_length", weight=2.0), response_length):
        assert type(build_reward(spec, policy)) is FunctionReward
    for model, kind in ((Reader(policy), ModelReward), (Reader(), ModelReward), (Reader(other), RetokenizedReward)):
        reward = build_reward(model, policy)
        assert type(reward) is kind and reward.module is model
        assert not model.training and not model.weight.requires_grad  # frozen
    assert type(build_reward("tiny", tokenizer)) is ModelReward  # a source is loaded, with the policy's tokenizer
    judge = build_reward(Recording(False), policy)
    assert type(judge) is JudgeReward and judge.module is None
    assert build_reward(judge, policy) is judge
    with pytest.raises(ValueError, match="no reward"):
        build_reward(None, policy)
    with pytest.raises(TypeError, match="not a int"):
        build_reward(3, policy)


def test_another_tokenizer_scores_the_messages_rendered_by_its_own_template():
    """The policy (ChatML) wrote the prompt; the reward model (Llama-3 template and tokens) scores exactly its own
    rendering of the data's messages with the decoded response as the assistant's turn, whatever the policy's ids of
    the prompt were (here cut to their last four tokens, as max_prompt_length does)."""
    policy, rm = family_tokenizer("chatml"), family_tokenizer("llama3")
    rendered = policy(policy.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False).input_ids
    rows = rollout(policy, [rendered[-4:]], ["It falls softly."], messages=[CHAT])
    reader = Reader(rm)
    scores = build_reward(reader, policy)(rows)
    answer = policy.decode(rows.response_ids[0][rows.response_mask[0].bool()], skip_special_tokens=True)
    assert answer == "It falls softly."  # the policy's end of turn skipped
    by_hand = rm.apply_chat_template(CHAT + [{"role": "assistant", "content": answer}], tokenize=False)
    assert by_hand.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one line.")
    assert reader.seen == [[rm(by_hand, add_special_tokens=False).input_ids]]
    assert scores.tolist() == [float(len(reader.seen[0][0]))]


def test_prompts_without_messages_fall_back_to_their_decoded_text():
    """Plain-text rows (no messages) of the same batch: the prompt decoded without the policy's special tokens,
    then BOS once, the response and the reward model's EOS, as the reward model's data encoder lays them out."""
    policy, rm = family_tokenizer("chatml"), family_tokenizer("llama3")
    plain = policy("Describe the sea.", add_special_tokens=False).input_ids
    chat = policy(policy.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False).input_ids
    rows = rollout(policy, [plain, chat], [" Wide.", " Blue.", "Wet.", "Cold."], messages=[None, CHAT], samples=2)
    prompts, responses = rollout_texts(rows, policy)
    assert prompts == ["Describe the sea.", "Describe the sea.", CHAT, CHAT]
    reader = Reader(rm)
    build_reward(reader, policy)(rows)
    for row in range(2):
        expected = ([rm.bos_token_id] + rm("Describe the sea.", add_special_tokens=False).input_ids
                    + rm(responses[row], add_special_tokens=False).input_ids + [rm.eos_token_id])
        assert reader.seen[0][row] == expected
    no_messages = rollout(policy, [plain], [" Wide."])  # data without any messages
    assert rollout_texts(no_messages, policy)[0] == ["Describe the sea."]


def test_functions_and_judges_get_the_prompts_messages():
    policy = family_tokenizer("chatml")
    plain = policy("Describe the sea.", add_special_tokens=False).input_ids
    chat = policy(policy.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False).input_ids
    rows = rollout(policy, [chat, plain], ["Wet.", "Cold.", " Wide.", " Blue."], messages=[CHAT, None], samples=2)
    SEEN.clear()
    build_reward(RewardFunction("test_reward_dispatch.chat_prompts", conversational=True), policy)(rows)
    as_user = [{"role": "user", "content": "Describe the sea."}]  # a plain-text prompt as one user turn
    assert SEEN == [[CHAT, CHAT, as_user, as_user]]
    for reads_messages, first in ((True, CHAT), (False, policy.decode(chat))):
        judge = Recording(reads_messages)
        scores = build_reward(judge, policy)(rows)
        assert judge.prompts == [first, policy.decode(plain)]  # one prompt per pair of rows
        assert scores.tolist() == [0.75, 0.25, 0.75, 0.25]


def test_reward_model_judge_scores_like_the_objectives_reward():
    """RewardModelJudge goes through the same dispatch: messages + response give the objective's reward."""
    policy, rm = family_tokenizer("chatml"), family_tokenizer("llama3")
    chat = policy(policy.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False).input_ids
    rows = rollout(policy, [chat], ["It falls softly."], messages=[CHAT])
    reader = Reader(rm)
    judge = RewardModelJudge(reader)
    judge.read_prompts_with(policy)
    assert type(judge.reward) is RetokenizedReward
    assert judge.rewards([CHAT], ["It falls softly."]).tolist() == build_reward(reader, policy)(rows).tolist()
    assert reader.seen[0] == reader.seen[1]
