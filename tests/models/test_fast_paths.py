"""Fast paths that prove themselves (lit_align/fast_path.py): the chunked LM head and shared-prompt packing give
the model's own log-probs on the architectures they serve (windows in the packed mask, post-head transforms in the
head) and turn themselves off, with one line, where they cannot."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_align.models.chunked_head import LogitTransform
from lit_align.models.fast_path import CHUNKED_HEAD, PACKING, FastPathCheck
from lit_align.models.logprobs import completion_token_logprobs, token_entropy
from lit_align.policy.with_reference import PolicyWithReference, position_ids_from_mask
from lit_align.models.packing import pack_shared_prompt

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


def _rows(vocab=96, prompts=(6, 9), completions=((12, 17), (14, 11)), seed=0):
    """Two examples of two completions each, right-padded, rows of 18-26 tokens."""
    g = torch.Generator().manual_seed(seed)
    width = max(p + c for p, cs in zip(prompts, completions) for c in cs)
    ids, attention, completion = (torch.zeros(4, width, dtype=torch.long) for _ in range(3))
    for b, p in enumerate(prompts):
        prompt = torch.randint(3, vocab, (p,), generator=g)
        for k, c in enumerate(completions[b]):
            row = k * 2 + b
            ids[row, :p], ids[row, p : p + c] = prompt, torch.randint(3, vocab, (c,), generator=g)
            attention[row, : p + c] = 1
            completion[row, p : p + c] = 1
    return ids, attention, completion


def _plain(model, ids, attention, completion):
    """The model's own forward of the separate rows: full logits, its own mask, positions of the real tokens."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                       use_cache=False).logits
    return completion_token_logprobs(logits, ids, completion)[0], token_entropy(logits[:, :-1])


def _host(model) -> PolicyWithReference:
    torch.manual_seed(0)
    policy = PolicyWithReference(reference="none")
    policy.policy = model.eval()
    return policy


def _packed(policy, ids, attention, completion):
    with torch.no_grad():
        return policy.packed_scores(pack_shared_prompt(ids, attention, completion, 2), ids.shape[1] - 1).logps


def _model(config):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _sliding_configs():
    from transformers import Cohere2Config, Gemma2Config, MistralConfig, Phi3Config, Qwen2Config

    return {
        "mistral": MistralConfig(**SMALL, sliding_window=4),
        "phi3": Phi3Config(**SMALL, sliding_window=4, pad_token_id=0),
        "qwen2 (window on)": Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=2),
        "gemma2 (sliding + full)": Gemma2Config(**SMALL, sliding_window=4, final_logit_softcapping=3.0),
        "cohere2 (sliding + full)": Cohere2Config(**SMALL, sliding_window=4,
                                                  layer_types=["sliding_attention", "full_attention"]),
    }


@pytest.mark.parametrize("name", sorted(_sliding_configs()))
def test_sliding_windows_are_applied_inside_the_packed_mask(name):
    """Rows of 18-26 tokens under a 4-token window: the packed mask without the window was off by 0.2-0.6 nats per
    row. Packing and the chunked head stay on and agree with the model's own forward token by token."""
    model = _model(_sliding_configs()[name])
    ids, attention, completion = _rows()
    expected, _ = _plain(model, ids, attention, completion)
    policy = _host(model)
    got = _packed(policy, ids, attention, completion)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert policy.fast_paths.allows("policy", PACKING) and policy.fast_paths.allows("policy", CHUNKED_HEAD)
    assert policy.fast_paths.lines == []


def test_a_muP_logit_multiplier_is_applied_by_the_chunked_head():
    """Falcon-H1 multiplies its logits by lm_head_multiplier: the chunked head dropped it (ln pi = -14.34 where the
    model gives -57.36)."""
    from transformers import FalconH1Config

    config = FalconH1Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_d_ssm=32,
                            mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, lm_head_multiplier=4.0)
    model = _model(config)
    ids, attention, completion = _rows()
    expected, entropy = _plain(model, ids, attention, completion)
    policy = _host(model)
    with torch.no_grad():
        scores = policy.completion_scores(ids, attention, completion, entropy=True)
    torch.testing.assert_close(scores.logps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.entropy * completion[:, 1:], entropy * completion[:, 1:], atol=1e-5, rtol=0)
    assert policy.fast_paths.allows("policy", CHUNKED_HEAD)


def test_post_head_transforms_are_read_from_every_config_that_declares_them():
    from transformers import CohereConfig, Gemma3Config, GraniteConfig

    assert LogitTransform.of(_model(CohereConfig(**SMALL, logit_scale=0.5))).multiplier == 0.5
    assert LogitTransform.of(_model(GraniteConfig(**SMALL, logits_scaling=8.0))).divisor == 8.0
    wrapper = type("Wrapper", (torch.nn.Module,), {})()  # a multimodal wrapper: the cap is in its text config
    wrapper.config = Gemma3Config(text_config={"final_logit_softcapping": 30.0})
    assert LogitTransform.of(wrapper).softcap == 30.0
    wrapper.config = LlamaConfig(**SMALL)
    wrapper.config.logit_scale = "inv_sqrt_d_model"  # not a number: the head is not used
    assert isinstance(LogitTransform.of(wrapper), str)


class _UndeclaredScale(LlamaForCausalLM):
    """A forward that scales its logits without saying so in its config."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


def test_an_undeclared_logit_transform_turns_the_chunked_head_off_with_one_line(caplog):
    model = _model_of(_UndeclaredScale)
    ids, attention, completion = _rows()
    expected, entropy = _plain(model, ids, attention, completion)
    policy = _host(model)
    with caplog.at_level(logging.INFO):
        scores = policy.completion_scores(ids, attention, completion, entropy=True)  # the on-policy call
    torch.testing.assert_close(scores.logps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.entropy * completion[:, 1:], entropy * completion[:, 1:], atol=1e-5, rtol=0)
    assert not policy.fast_paths.allows("policy", CHUNKED_HEAD)
    [line] = policy.fast_paths.lines
    assert "chunked LM head off for _UndeclaredScale" in line and "nats per token" in line
    assert line in caplog.text


class _RejectsPackedMask(LlamaForCausalLM):
    """An architecture that fails on a 4-D mask with an error that names nothing."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            raise ValueError("too many values to unpack (expected 2)")
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               **kwargs)


def _model_of(cls):
    torch.manual_seed(0)
    return cls(LlamaConfig(**SMALL))


def test_an_architecture_that_rejects_the_packed_mask_runs_its_rows_separately_and_says_why():
    model = _model_of(_RejectsPackedMask)
    ids, attention, completion = _rows()
    expected, _ = _plain(model, ids, attention, completion)
    policy = _host(model)
    torch.testing.assert_close(_packed(policy, ids, attention, completion), expected, atol=1e-5, rtol=0)
    assert not policy.fast_paths.allows("policy", PACKING) and policy.fast_paths.allows("policy", CHUNKED_HEAD)
    [line] = policy.fast_paths.lines
    assert "shared-prompt packing off for _RejectsPackedMask" in line and "too many values to unpack" in line


def test_alibi_positions_are_never_packed():
    from transformers import MptConfig

    model = _model(MptConfig(vocab_size=96, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2))
    ids, attention, completion = _rows()
    expected, _ = _plain(model, ids, attention, completion)
    policy = _host(model)
    torch.testing.assert_close(_packed(policy, ids, attention, completion), expected, atol=1e-5, rtol=0)
    [line] = policy.fast_paths.lines
    assert "packing off for MptForCausalLM" in line and "ALiBi" in line


def test_the_check_runs_once_and_its_cost_is_one_plain_forward():
    model = _model(LlamaConfig(**SMALL))
    policy = _host(model)
    ids, attention, completion = _rows()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    _packed(policy, ids, attention, completion)
    assert len(calls) == 2 and policy.fast_paths.cost_s > 0  # the packed forward and the plain one beside it
    _packed(policy, ids, attention, completion)
    assert len(calls) == 3  # decided: no more checks
    assert {v.final for v in policy.fast_paths.verdicts.values()} == {True}


def test_rows_shorter_than_the_window_leave_the_decision_open_until_a_longer_batch():
    from transformers import MistralConfig

    model = _model(MistralConfig(**SMALL, sliding_window=32))
    policy = _host(model)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    short = _rows()  # 18-26 tokens, shorter than the 32-token window
    _packed(policy, *short)
    assert not policy.fast_paths.verdicts[("policy", PACKING)].final
    _packed(policy, *short)
    assert len(calls) == 3  # no check on another short batch
    long = _rows(prompts=(20, 22), completions=((15, 12), (9, 16)))
    _packed(policy, *long)
    assert len(calls) == 5 and policy.fast_paths.verdicts[("policy", PACKING)].final
    _packed(policy, *long)
    assert len(calls) == 6


def test_a_fallback_is_decided_the_same_way_for_the_reference_and_recorded_per_role():
    check = FastPathCheck()
    assert check.allows("reference", PACKING)
    policy = _host(_model_of(_RejectsPackedMask))
    policy.fast_paths = check
    ids, attention, completion = _rows()
    with torch.no_grad():
        policy.packed_scores(pack_shared_prompt(ids, attention, completion, 2), ids.shape[1] - 1)
    assert not check.allows("policy", PACKING) and check.allows("reference", PACKING)


class _IgnoresPackedMask(LlamaForCausalLM):
    """An architecture that drops a 4-D mask (plain causal attention): packed completions see their siblings."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               **kwargs)


def test_check_rows_are_the_longest_and_last_first_and_fit_the_budget():
    from lit_align.models.fast_path import check_rows

    lengths = torch.tensor([18, 23, 9, 20, 23, 12])
    assert check_rows(lengths, vocab=100, budget=1).tolist() == [1, 5]  # the longest, the last
    assert check_rows(lengths, vocab=100, budget=23 * 100 * 4).tolist() == [0, 1, 2, 5]  # + the shortest, the first
    assert check_rows(lengths, vocab=100).tolist() == list(range(6))  # a small vocabulary: every row


def test_the_check_at_a_large_vocabulary_runs_the_plain_forward_on_a_few_rows_and_still_catches_a_wrong_mask(
        monkeypatch):
    """At a 131k vocabulary the plain forward's (B, T, V) logits of the whole first batch were 4.5x the run's peak
    memory: the check sees as many rows as fit the chunked head's budget (here the fewest, 2), which still cover a
    packed row whose mask must hide its sibling."""
    import lit_align.models.fast_path as fast_path

    monkeypatch.setattr(fast_path, "CHUNK_ELEMENTS", 1)
    model = _model_of(_IgnoresPackedMask)
    ids, attention, completion = _rows()
    expected, _ = _plain(model, ids, attention, completion)
    policy = _host(model)
    seen = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((kwargs["input_ids"].shape[0], kwargs["attention_mask"].dim())),
        with_kwargs=True)
    torch.testing.assert_close(_packed(policy, ids, attention, completion), expected, atol=1e-5, rtol=0)
    assert not policy.fast_paths.allows("policy", PACKING)
    assert [rows for rows, dim in seen if dim == 2][0] == fast_path.MIN_CHECK_ROWS  # the check's plain forward
