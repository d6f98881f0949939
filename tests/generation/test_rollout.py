"""Sampling from the current policy (lit_align/rollout.py): layout, EOS handling, padding, modes and weights.

Several tests replace the tiny model's LM head by one whose next-token distribution is fixed by a bias and
independent of the context (zero weight): e.g. P(EOS) = 0.5 at every step, or every token = 7. That makes the
expected behaviour exact rather than statistical.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_align.models.logprobs import completion_token_logprobs
from lit_align.models.loading import load_causal_lm
from lit_align.policy.with_reference import run_causal_lm
from lit_align.generation.records import RowText, decode_rows, prompt_text
from lit_align.generation.rollout import Rollout, SamplingConfig, sample

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model():
    return load_causal_lm("tiny")


def _prompts(tokenizer, texts):
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    return ids, mask


def _fixed_head_model(bias: torch.Tensor) -> nn.Module:
    """The tiny model with a context-free next-token distribution softmax(bias)."""
    model = load_causal_lm("tiny")
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(bias)
    model.lm_head = head
    return model


def _eos_probability_bias(vocab: int, p_eos: float) -> torch.Tensor:
    bias = torch.zeros(vocab)
    bias[EOS] = math.log(p_eos * (vocab - 1) / (1 - p_eos))  # every other token has logit 0
    return bias


def _one_token_bias(vocab: int, token: int) -> torch.Tensor:
    bias = torch.full((vocab,), -30.0)
    bias[token] = 30.0
    return bias


def test_shapes_and_grouping(model, tokenizer):
    ids, mask = _prompts(tokenizer, ["Write a line about a lamp.", "Hi."])
    out = sample(model, ids, mask, SamplingConfig(max_new_tokens=6), EOS, PAD, num_samples=3)
    n, width = 6, ids.shape[1]
    assert out.input_ids.shape[0] == n and out.prompt_length == width
    assert out.input_ids.shape == out.attention_mask.shape == out.completion_mask.shape
    assert out.input_ids.shape[1] - width <= 6 and out.ended.shape == (n,)
    assert out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    for row in range(n):  # row i * k + j answers prompt i, whose left-padded tokens it starts with
        assert torch.equal(out.input_ids[row, :width], ids[row // 3])
        assert torch.equal(out.attention_mask[row, :width], mask[row // 3])
    assert out.completion_mask[:, :width].sum() == 0
    assert torch.equal(out.response_mask, out.attention_mask[:, width:])
    assert out.lengths.tolist() == out.response_mask.sum(-1).tolist()


def test_eos_detection_and_masking_after_eos(tokenizer):
    torch.manual_seed(0)
    model = _fixed_head_model(_eos_probability_bias(474, 0.4))
    ids, mask = _prompts(tokenizer, ["Write a line about a lamp."])
    out = sample(model, ids, mask, SamplingConfig(max_new_tokens=5, min_new_tokens=0), EOS, PAD, num_samples=32)
    response, response_mask = out.response_ids, out.response_mask
    assert out.ended.any() and not out.ended.all()  # P(no EOS in 5) = 0.6^5 = 0.08: both kinds among 32
    for row in range(32):
        eos_at = (response[row] == EOS).nonzero()
        if out.ended[row]:
            first = eos_at[0].item()
            assert response_mask[row].tolist() == [1] * (first + 1) + [0] * (response.shape[1] - first - 1)
            assert (response[row, first + 1 :] == PAD).all()  # nothing after the first EOS is kept
        else:
            assert len(eos_at) == 0 and response_mask[row].all() and out.lengths[row] == 5


def test_min_and_max_new_tokens(tokenizer):
    torch.manual_seed(0)
    model = _fixed_head_model(_eos_probability_bias(474, 0.9))
    ids, mask = _prompts(tokenizer, ["Hi.", "What is a bridge like?"])
    out = sample(model, ids, mask, SamplingConfig(max_new_tokens=8, min_new_tokens=3), EOS, PAD, num_samples=8)
    assert (out.response_ids[:, :3] != EOS).all()  # EOS suppressed for the first 3 tokens
    assert (out.lengths >= 4).all() and (out.lengths <= 8).all()
    assert (out.lengths == 4).float().mean() > 0.6  # and then taken at once with probability 0.9

    never = _fixed_head_model(_one_token_bias(474, 7))
    out = sample(never, ids, mask, SamplingConfig(max_new_tokens=5), EOS, PAD, num_samples=2)
    assert out.response_ids.shape[1] == 5 and (out.lengths == 5).all() and not out.ended.any()


def test_temperature_zero_is_greedy_and_deterministic(model, tokenizer):
    ids, mask = _prompts(tokenizer, ["Write a line about a lamp.", "Hi."])
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    torch.manual_seed(1)
    first = sample(model, ids, mask, config, EOS, PAD, num_samples=2)
    torch.manual_seed(2)
    second = sample(model, ids, mask, config, EOS, PAD, num_samples=2)
    assert torch.equal(first.input_ids, second.input_ids)
    with torch.no_grad():
        logits = model(input_ids=first.input_ids, attention_mask=first.attention_mask,
                       position_ids=(first.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    greedy = logits[:, :-1].argmax(-1)  # (N, T-1): the most likely next token at every position
    picked = first.completion_mask[:, 1:].bool()
    assert torch.equal(greedy[picked], first.input_ids[:, 1:][picked])


def test_left_padded_prompt_gives_the_unpadded_response_and_logprobs(model, tokenizer):
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    ids, mask = _prompts(tokenizer, ["Hi.", "Write a line about a lamp and a bridge."])
    assert mask[0, 0] == 0  # the first prompt is left-padded
    batched = sample(model, ids, mask, config, EOS, PAD)
    alone_ids, alone_mask = _prompts(tokenizer, ["Hi."])
    alone = sample(model, alone_ids, alone_mask, config, EOS, PAD)
    length = alone.lengths[0].item()
    assert batched.lengths[0].item() == length
    assert torch.equal(batched.response_ids[0, :length], alone.response_ids[0, :length])

    def scored(out):  # scored the way every objective scores a rollout
        with torch.no_grad():
            logits = run_causal_lm(model, out.input_ids, out.attention_mask)
        return completion_token_logprobs(logits, out.input_ids, out.completion_mask)[0]

    got = scored(batched)[0][batched.completion_mask[0, 1:].bool()]
    want = scored(alone)[0][alone.completion_mask[0, 1:].bool()]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mode_restored_and_no_grad(model, tokenizer):
    ids, mask = _prompts(tokenizer, ["Hi."])
    for training in (True, False):
        model.train(training)
        out = sample(model, ids, mask, SamplingConfig(max_new_tokens=3), EOS, PAD)
        assert model.training is training
        assert not out.input_ids.requires_grad
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_samples_come_from_the_current_weights(tokenizer):
    torch.manual_seed(0)
    model = _fixed_head_model(_one_token_bias(474, 7))
    ids, mask = _prompts(tokenizer, ["Hi."])
    config = SamplingConfig(max_new_tokens=4)
    assert (sample(model, ids, mask, config, EOS, PAD, num_samples=4).response_ids == 7).all()
    with torch.no_grad():
        model.lm_head.bias.copy_(_one_token_bias(474, 11))  # an optimizer step, in effect
    assert (sample(model, ids, mask, config, EOS, PAD, num_samples=4).response_ids == 11).all()


def test_invalid_config_is_refused():
    with pytest.raises(ValueError):
        SamplingConfig(max_new_tokens=2, min_new_tokens=3)
    with pytest.raises(ValueError):
        SamplingConfig(temperature=-1.0)


def test_default_lets_eos_end_a_response_at_the_first_step(tokenizer):
    """min_new_tokens defaults to 0: with P(EOS) = 0.5 at every step, about half the responses are EOS alone (a
    minimum of 1 would suppress EOS at the first step, so samples would not come from the policy)."""
    assert SamplingConfig().min_new_tokens == 0
    torch.manual_seed(0)
    model = _fixed_head_model(_eos_probability_bias(474, 0.5))
    ids, mask = _prompts(tokenizer, ["Hi."])
    out = sample(model, ids, mask, SamplingConfig(max_new_tokens=4), EOS, PAD, num_samples=64)
    immediate = (out.lengths == 1) & (out.response_ids[:, 0] == EOS)
    assert 0.3 < immediate.float().mean().item() < 0.7  # 64 draws of a fair coin: 4 standard deviations


def test_greedy_is_refused_where_samples_are_scored():
    from lit_align.errors import UserError

    SamplingConfig(temperature=0.5).require_distribution("RLHF")  # fine
    with pytest.raises(UserError, match=r"^RLHF: sampling.temperature=0 is greedy decoding.*temperature > 0"):
        SamplingConfig(temperature=0.0).require_distribution("RLHF")


def test_one_decoder_reads_sampled_and_data_rows_alike(tokenizer):
    """decode_rows tells prompt from response by the masks: a left-padded sampled row and the same text as a
    right-padded data row decode to the same prompt and response; the stop token is not response text."""
    prompt, response = tokenizer("Tell me")["input_ids"], tokenizer(" the sea", add_special_tokens=False)["input_ids"]
    p, r = len(prompt), len(response) + 1
    left = torch.tensor([[PAD, PAD] + prompt + response + [EOS]])  # two pad columns before the prompt
    left_attention = torch.tensor([[0, 0] + [1] * (p + r)])
    left_completion = torch.tensor([[0] * (2 + p) + [1] * r])
    right = torch.tensor([prompt + response + [EOS] + [PAD] * 2])
    right_attention = torch.tensor([[1] * (p + r) + [0, 0]])
    right_completion = torch.tensor([[0] * p + [1] * r + [0, 0]])
    rows = [decode_rows(Rollout(ids, attention, completion, 2 + p, torch.tensor([True]), torch.tensor([0])), tokenizer)
            for ids, attention, completion in ((left, left_attention, left_completion),
                                               (right, right_attention, right_completion))]
    assert rows[0] == rows[1] == [RowText(prompt_text(prompt, tokenizer), " the sea", True, r)]
    readable = decode_rows(Rollout(left, left_attention, left_completion, 2 + p, torch.tensor([False]),
                                   torch.tensor([0])), tokenizer, prompt_special_tokens=False)
    assert readable == [RowText(tokenizer.decode(prompt, skip_special_tokens=True), " the sea", False, r)]


def test_rollout_rows_slice_every_per_row_field():
    rollout = Rollout(torch.arange(12).view(3, 4), torch.ones(3, 4), torch.zeros(3, 4), 2, torch.tensor([1, 0, 1]),
                      torch.tensor([0, 1, 2]), sampling=SamplingConfig(), prompt_messages=[[], [], []],
                      engine_logps=torch.arange(12.0).view(3, 4), version=5)
    part = rollout.rows(torch.tensor([2, 0]))
    assert torch.equal(part.input_ids, rollout.input_ids[[2, 0]])
    assert torch.equal(part.engine_logps, rollout.engine_logps[[2, 0]])
    assert torch.equal(part.prompt_index, torch.tensor([2, 0])) and part.prompt_messages is rollout.prompt_messages
    assert (part.prompt_length, part.version, part.sampling, part.policy_mask) == (2, 5, rollout.sampling, None)
