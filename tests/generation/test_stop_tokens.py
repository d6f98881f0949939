"""Sampling stops where the data taught the policy to stop: at the chat template's end-of-turn token too, not only
at the tokenizer's EOS (Gemma's <end_of_turn>, Phi-3's <|end|>, Llama-3's <|eot_id|> under a base tokenizer)."""

from __future__ import annotations

import pytest
import torch

from support.chat_templates import FAMILIES, build_tokenizer
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.generation.rollout import SamplingConfig


def _policy_with(tokenizer) -> PolicyWithReference:
    policy = PolicyWithReference(model="tiny", reference="none")
    policy.tokenizer = tokenizer
    policy.base_model.resize_token_embeddings(len(tokenizer))
    policy._stop_token_ids = None
    return policy


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_stop_tokens_hold_eos_and_the_templates_end_of_turn(family):
    tokenizer = build_tokenizer(family)
    stops = _policy_with(tokenizer).stop_token_ids
    assert tokenizer.convert_tokens_to_ids(family.end_of_turn) in stops
    assert tokenizer.eos_token_id in stops


def test_a_response_ends_at_the_end_of_turn_token():
    """A policy that always writes Gemma's <end_of_turn> (its EOS is <eos>): each response is that one token and
    counts as ended, so no missing-EOS penalty replaces its reward and nothing after it is trained on."""
    family = next(f for f in FAMILIES if f.name == "gemma")
    tokenizer = build_tokenizer(family)
    policy = _policy_with(tokenizer)
    turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    head = policy.base_model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([turn]), 1e4))
    prompts = tokenizer(["Hello there", "Hi"], padding=True, return_tensors="pt", add_special_tokens=False)
    rollout = policy.generate(prompts.input_ids, prompts.attention_mask, SamplingConfig(max_new_tokens=8),
                              num_samples=2)
    assert rollout.ended.all()
    assert rollout.lengths.tolist() == [1, 1, 1, 1]
    assert (rollout.response_ids[:, 0] == turn).all()
