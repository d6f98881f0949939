"""On-policy rows packed behind one copy of their prompt (``share_prompt``): a rollout's left-padded prompts and
right-padded responses, several per prompt, give the log-probs, entropies and hidden states of the separate rows,
in the reference's, the sampling-time and the update's forwards, and the packed row holds each prompt once."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lit_align.generation.rollout import Rollout, SamplingConfig
from lit_align.models.fast_path import PACKING
from lit_align.models.logprobs import completion_token_logprobs, token_entropy
from lit_align.models.packing import pack_shared_prompt
from lit_align.objectives import RLHF, RLOO
from lit_align.policy.with_reference import PolicyWithReference, position_ids_from_mask
from support.onpolicy import LengthReward, prompt_batch

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


def _rollout(prompts=(3, 7), responses=((5, 9, 2), (8, 1, 6)), vocab=96, seed=0) -> Rollout:
    """Prompt-major rows (row i * K + j: sample j of prompt i): left-padded prompts, right-padded responses."""
    g = torch.Generator().manual_seed(seed)
    k = len(responses[0])
    width, reply = max(prompts), max(max(r) for r in responses)
    rows = len(prompts) * k
    ids, attention, completion = (torch.zeros(rows, width + reply, dtype=torch.long) for _ in range(3))
    for i, p in enumerate(prompts):
        prompt = torch.randint(3, vocab, (p,), generator=g)
        for j, n in enumerate(responses[i]):
            row = i * k + j
            ids[row, width - p : width] = prompt
            ids[row, width : width + n] = torch.randint(3, vocab, (n,), generator=g)
            attention[row, width - p : width + n] = 1
            completion[row, width : width + n] = 1
    return Rollout(ids, attention, completion, width, torch.ones(rows, dtype=torch.bool),
                   torch.arange(rows) // k, sampling=SamplingConfig(max_new_tokens=reply, temperature=0.7))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rollout_rows_are_the_separate_rows(attention):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL, attn_implementation=attention)).eval()
    host = PolicyWithReference(reference="none")
    host.policy = model
    rollout = _rollout()
    packed = pack_shared_prompt(rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                                rollout.prompt_index)
    # one packed row per prompt: its real tokens once, then every response
    assert packed.input_ids.shape[0] == 2
    assert packed.input_ids.shape[1] == max(3 + 5 + 9 + 2, 7 + 8 + 1 + 6)

    with torch.no_grad():
        scores = host.packed_scores(packed, rollout.input_ids.shape[1] - 1, 0.7, entropy=True, hidden=True)
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=position_ids_from_mask(rollout.attention_mask), output_hidden_states=True,
                       use_cache=False)
    assert host.fast_paths.allows("policy", PACKING)  # the check kept it: the values below are the packed ones
    expected = completion_token_logprobs(logits.logits / 0.7, rollout.input_ids, rollout.completion_mask)[0]
    mask = rollout.completion_mask[:, 1:].bool()
    assert torch.equal(scores.mask, mask)
    torch.testing.assert_close(scores.logps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.entropy.masked_fill(~mask, 0),
                               token_entropy(logits.logits[:, :-1] / 0.7).masked_fill(~mask, 0), atol=1e-5, rtol=0)
    final = logits.hidden_states[-1][:, :-1]  # (R, T-1, H) after the final norm: the head's input
    torch.testing.assert_close(scores.hidden[:, :-1][mask], final[mask], atol=1e-5, rtol=0)


def _objective(cls=RLOO, **kwargs):
    torch.manual_seed(0)
    return cls(reward_model=LengthReward(), sampling=SamplingConfig(max_new_tokens=6, temperature=1.0),
               num_samples=3, learning_rate=1e-2, warmup_ratio=0.0, **kwargs)


@pytest.mark.parametrize("cls", [RLOO, RLHF], ids=["rloo", "rlhf"])
def test_onpolicy_forwards_pack_each_prompt_once(cls, monkeypatch):
    shared, separate = _objective(cls), _objective(cls, share_prompt=False)
    torch.manual_seed(1)
    rollout = shared.generate(prompt_batch(shared, n=3))
    assert rollout.input_ids.shape[0] == 9

    packed_rows = []
    real = pack_shared_prompt

    def spy(*args):
        out = real(*args)
        packed_rows.append(out.input_ids.shape[0])
        return out

    monkeypatch.setattr("lit_align.objectives.onpolicy.base.pack_shared_prompt", spy)
    with torch.no_grad():
        ref = shared.chunked_token_logps(rollout, reference=True)[0]
        expected_ref = separate.chunked_token_logps(rollout, reference=True)[0]
        if cls is RLHF:
            (got, values), (want, want_values) = shared.forward_with_values(rollout), \
                separate.forward_with_values(rollout)
            mask = rollout.completion_mask[:, 1:].bool()
            torch.testing.assert_close(values[mask], want_values[mask], atol=1e-5, rtol=0)
            got, want = got.logps, want.logps
        else:
            got, want = shared.token_logps_of(rollout), separate.token_logps_of(rollout)
    assert packed_rows and set(packed_rows) == {3}  # every forward of the shared module: 3 prompts, 3 rows
    for role in ("policy", "reference"):
        assert shared.policy.fast_paths.allows(role, PACKING)
    torch.testing.assert_close(ref, expected_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_experience_chunks_keep_a_prompts_samples_together():
    module = _objective(mini_batches=2)
    rollout = _rollout(prompts=(3, 7, 4), responses=((5, 9, 2), (8, 1, 6), (2, 2, 2)))
    chunks = module.experience_chunks(rollout)
    assert [c.input_ids.shape[0] for c in chunks] == [6, 3]  # 9 rows in 2 chunks of whole prompts (3 samples each)
    for chunk in chunks:
        counts = torch.bincount(chunk.prompt_index)
        assert set(counts[counts > 0].tolist()) == {3}


def test_episodes_and_single_samples_run_unpacked(monkeypatch):
    calls = []
    monkeypatch.setattr("lit_align.objectives.onpolicy.base.pack_shared_prompt",
                        lambda *a: calls.append(a) or pack_shared_prompt(*a))
    single = _objective()
    single.num_samples = 1
    rollout = _rollout()
    with torch.no_grad():
        single.token_logps_of(rollout)
    episodes = _objective()
    tool_turns = rollout.completion_mask.clone()
    tool_turns[:, -2:] = 0  # the policy did not write every response token: the trained mask is not one span
    with torch.no_grad():
        episodes.token_logps_of(Rollout(**{**rollout.__dict__, "policy_mask": tool_turns}))
    assert not calls


def test_many_long_samples_behind_a_short_prompt_run_apart(monkeypatch):
    """Eight 40-token samples behind a 3-token prompt: one packed row of 323 tokens costs more than eight of 43
    at hidden size 32 (attention grows with the square of the length), so the rows run separately; two short
    samples behind a longer prompt are packed."""
    torch.manual_seed(0)
    host = PolicyWithReference(reference="none")
    host.policy = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL)).eval()
    widths = []
    real = host._scores

    def spy(layout, input_ids, *args, **kwargs):
        widths.append(input_ids.shape)
        return real(layout, input_ids, *args, **kwargs)

    monkeypatch.setattr(host, "_scores", spy)
    long = _rollout(prompts=(3,), responses=((40,) * 8,))
    short = _rollout(prompts=(30, 24), responses=((4, 6), (5, 3)))
    with torch.no_grad():
        for rollout in (long, short):
            packed = pack_shared_prompt(rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                                        rollout.prompt_index)
            scores = host.packed_scores(packed, rollout.input_ids.shape[1] - 1)
            separate = host.completion_scores(rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
            torch.testing.assert_close(scores.logps, separate.logps, atol=1e-5, rtol=0)
    shapes = [tuple(w) for w in widths]
    assert (1, 3 + 8 * 40) not in shapes  # the long samples ran as their eight rows
    assert (2, 30 + 10) in shapes  # the short ones ran packed: one row per prompt
