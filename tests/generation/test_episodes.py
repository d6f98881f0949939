"""Multi-turn episodes as rollout rows: the exact token layout, the masks, the returns, and no gradient through the
tokens the policy did not write."""

from __future__ import annotations

import json

import torch

from lit_align.environments import CalculatorEnvironment
from lit_align.environments.render import environment_delta, render
from lit_align.generation.episodes import Turn, prompt_rows, run_episodes, turns_from_generate
from lit_align.generation.rollout import Rollout, SamplingConfig
from lit_align.models.loading import load_causal_lm, load_tokenizer

ROWS = [{"prompt": "What is 3*(4+5)?", "answer": 27}, {"prompt": "What is 2+2?", "answer": 4}]
CALL = "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": "3*(4+5)"}}) + "</tool_call>"


def encode(tokenizer, text: str, stop: bool = True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id] if stop else ids


class Scripted:
    """A fake policy: episode i's turn t is ``replies[i][t]`` (with log-probs -0.5 each when ``logps``); records
    the sequences it was shown."""

    def __init__(self, tokenizer, replies: list[list[str]], logps: bool = True) -> None:
        self.tokenizer, self.replies, self.shown, self.logps = tokenizer, replies, [], logps

    def __call__(self, sequences, max_new_tokens):
        self.shown.append([list(s) for s in sequences])
        turns = []
        for seq in sequences:
            episode = next(i for i, r in enumerate(self.replies) if r and self._is(seq, i))
            ids = encode(self.tokenizer, self.replies[episode].pop(0))
            turns.append(Turn(ids, [-0.5] * len(ids) if self.logps else None))
        return turns

    def _is(self, seq, i):
        return self.tokenizer.decode(seq).find(ROWS[i]["prompt"]) >= 0


def expected_row(tokenizer, env, row, replies):
    """The episode's tokens and policy mask built turn by turn from the template's rendering."""
    messages = env.reset(row)
    prompt = encode(tokenizer, render(tokenizer, messages, env.tools, True), stop=False)
    ids, mask = list(prompt), [0] * len(prompt)
    for k, reply in enumerate(replies):
        policy = encode(tokenizer, reply)
        ids, mask = ids + policy, mask + [1] * len(policy)
        messages = messages + [{"role": "assistant", "content": tokenizer.decode(policy, skip_special_tokens=True)}]
        step = env.step(messages[-1]["content"])
        if not step.done:
            delta = environment_delta(tokenizer, messages, step.messages, policy, env.tools)
            ids, mask = ids + delta, mask + [0] * len(delta)
            messages = messages + step.messages
    return prompt, ids, mask


def test_calculator_episode_layout_masks_and_returns():
    tokenizer = load_tokenizer("tiny")
    env = CalculatorEnvironment(max_turns=3)
    replies = [[CALL, "It is 27."], ["4"]]  # a tool call then the answer; a direct (correct) answer
    policy = Scripted(tokenizer, [list(r) for r in replies])
    out = run_episodes(policy, env, ROWS, tokenizer, sampling=SamplingConfig())
    r = out.rollout
    assert out.rewards.tolist() == [1.0, 1.0] and out.turns.tolist() == [2, 1] and r.ended.tolist() == [True, True]
    assert len(policy.shown) == 2 and len(policy.shown[1]) == 1  # the turns batched; finished episodes leave
    width = r.prompt_length
    for i, row in enumerate(ROWS):
        prompt, ids, mask = expected_row(tokenizer, CalculatorEnvironment(max_turns=3), row, replies[i])
        pad = width - len(prompt)
        real = torch.tensor([0] * pad + [1] * len(ids) + [0] * (r.input_ids.shape[1] - pad - len(ids)))
        assert r.input_ids[i][real.bool()].tolist() == ids and (r.input_ids[i][~real.bool()] == 0).all()
        assert r.attention_mask[i].tolist() == real.tolist()
        assert r.completion_mask[i].tolist() == [0] * width + real[width:].tolist()
        assert r.policy_mask[i][real.bool()].tolist() == mask and r.policy_mask[i].sum() == sum(mask)
        assert (r.engine_logps[i] == -0.5 * r.policy_mask[i]).all()
    # the tool's answer is in the sequence the policy read, and masked out of what it wrote
    text = tokenizer.decode(r.input_ids[0][(r.completion_mask[0] - r.policy_mask[0]).bool()])
    assert "<tool_response>" in text and "27" in text
    assert r.prompt_messages == [CalculatorEnvironment().reset(row) for row in ROWS]
    assert r.prompt_index.tolist() == [0, 1]


def test_budgets_end_episodes():
    tokenizer = load_tokenizer("tiny")
    # the turn budget: two tool calls with max_turns 2 end truncated, reward 0, not ended
    out = run_episodes(Scripted(tokenizer, [[CALL, CALL], []], logps=False), CalculatorEnvironment(max_turns=2),
                       ROWS[:1], tokenizer)
    assert out.turns.tolist() == [2] and out.rewards.tolist() == [0.0] and out.rollout.ended.tolist() == [False]
    assert out.rollout.engine_logps is None  # the sampler reported no log-probs
    # the token budget: the first turn is cut to max_tokens and not answered
    budget = 5
    out = run_episodes(Scripted(tokenizer, [[CALL], []]), CalculatorEnvironment(max_tokens=budget), ROWS[:1],
                       tokenizer)
    assert out.rollout.policy_mask.sum() == budget and out.turns.tolist() == [1]
    assert out.rollout.ended.tolist() == [False] and out.rewards.tolist() == [0.0]


def test_num_samples_rows_are_prompt_major():
    tokenizer = load_tokenizer("tiny")
    policy = Scripted(tokenizer, [["27", "26"], ["4", "4"]])
    out = run_episodes(policy, CalculatorEnvironment(), ROWS, tokenizer, num_samples=2)
    assert out.rollout.prompt_index.tolist() == [0, 0, 1, 1]
    assert out.rewards.tolist() == [1.0, 0.0, 1.0, 1.0] and len(out.rollout.prompt_messages) == 2


def test_environment_tokens_get_no_gradient():
    """A loss over the policy_mask-ed log-probs of the tiny model: the logits that predict a tool-result or
    template token get exactly zero gradient, those that predict the policy's tokens do not."""
    tokenizer = load_tokenizer("tiny")
    out = run_episodes(Scripted(tokenizer, [[CALL, "It is 27."], ["4"]]), CalculatorEnvironment(), ROWS, tokenizer)
    r = out.rollout
    model = load_causal_lm("tiny")
    logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask).logits  # (N, T, V)
    logits.retain_grad()
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    (-(logps * r.policy_mask[:, 1:]).sum()).backward()
    predicts_env = (r.completion_mask[:, 1:] - r.policy_mask[:, 1:]).bool()  # (N, T-1)
    grad = logits.grad[:, :-1].abs().amax(-1)  # (N, T-1): position t predicts token t+1
    assert predicts_env.sum() > 0 and (grad[predicts_env] == 0).all()
    assert (grad[r.policy_mask[:, 1:].bool()] > 0).all()


def test_turns_from_generate_pads_cuts_and_reads_engine_logps():
    calls = []

    def generate(prompt_ids, prompt_mask, sampling, num_samples):
        calls.append((prompt_ids.clone(), prompt_mask.clone(), sampling.max_new_tokens, num_samples))
        n, width = prompt_ids.shape
        response = torch.tensor([[5, 2, 0], [6, 7, 8]])  # row 0 stopped at token 2 (then padding)
        response_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
        logps = torch.cat([torch.zeros(n, width), -response_mask.float()], 1)
        return Rollout(torch.cat([prompt_ids, response], 1), torch.cat([prompt_mask, response_mask], 1),
                       torch.cat([torch.zeros_like(prompt_mask), response_mask], 1), width,
                       torch.tensor([True, False]), torch.arange(n), engine_logps=logps)

    sample = turns_from_generate(generate, SamplingConfig(max_new_tokens=8), pad_token_id=0)
    turns = sample([[9, 9, 9], [4]], 3)
    ids, mask, new, k = calls[0]
    assert ids.tolist() == [[9, 9, 9], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]] and (new, k) == (3, 1)
    assert [t.token_ids for t in turns] == [[5, 2], [6, 7, 8]]
    assert [t.logps for t in turns] == [[-1.0, -1.0], [-1.0, -1.0, -1.0]]


def test_prompt_rows_read_the_prompt_text_and_declared_columns():
    tokenizer = load_tokenizer("tiny")
    ids = [tokenizer(row["prompt"], add_special_tokens=False).input_ids for row in ROWS]
    width = max(map(len, ids))
    batch = {"prompt_ids": torch.tensor([[0] * (width - len(i)) + i for i in ids]),
             "prompt_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]),
             "answer": torch.tensor([27.0, 4.0])}
    assert prompt_rows(batch, tokenizer, ["answer"]) == [{"prompt": r["prompt"], "answer": r["answer"]} for r in ROWS]
    batch["prompt_messages"] = [[{"role": "user", "content": r["prompt"]}] for r in ROWS]
    assert prompt_rows(batch, tokenizer)[1] == {"prompt": ROWS[1]["prompt"], "messages": batch["prompt_messages"][1]}
