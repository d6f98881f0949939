"""The samples of a prompt share its prefill (``rollout.shared_prefill``): the prompt's keys and values are computed
once and repeated for each sample, proven once per architecture against the model's own forward, or not used.

The architectures are the registry's own, built tiny (``benchmarks/architecture_matrix.py``): prompts longer than
their 4-token attention windows, one left-padded.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.generation import rollout as R
from lit_align.generation.rollout import SamplingConfig, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = 3


def _matrix():
    spec = importlib.util.spec_from_file_location("architecture_matrix",
                                                  os.path.join(ROOT, "benchmarks", "architecture_matrix.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(R, "_PREFILL_VERDICTS", {})


def _tiny(model_type: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_matrix().tiny_config(model_type)).eval()


def _prompts(vocab: int = 96):
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (2, 9))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def _own_logps(model, rollout):
    positions = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=positions).logits
    logps = logits[:, :-1].float().log_softmax(-1).gather(-1, rollout.input_ids[:, 1:, None]).squeeze(-1)
    return logps, rollout.completion_mask[:, 1:].bool()


@pytest.mark.parametrize("model_type,shared", [("llama", True), ("mistral", True), ("gemma2", True),
                                               ("gpt_neox", True), ("mamba", False)])
def test_samples_keep_the_models_own_logprobs(model_type, shared):
    """With the prefill shared (attention windows and soft caps included) or refused by its check (a state-space
    cache), every sampled token's recorded log-prob is the model's own forward's."""
    model = _tiny(model_type)
    ids, mask = _prompts()
    rollout = sample(model, ids, mask, SamplingConfig(max_new_tokens=8, logprobs=True), 2, 0, num_samples=SAMPLES)
    assert R._PREFILL_VERDICTS[R._architecture_key(model)] is shared
    own, response = _own_logps(model, rollout)
    assert response.any()
    torch.testing.assert_close(rollout.engine_logps[:, 1:][response], own[response], atol=1e-5, rtol=0)


def test_the_prompt_is_run_once_not_once_per_sample():
    """After the check, a call runs the B prompts' columns but the last once, then every sample from the last
    prompt column on; the same seed draws what the unshared path draws."""
    model = _tiny("llama")
    ids, mask = _prompts()
    config = SamplingConfig(max_new_tokens=6, logprobs=True)
    sample(model, ids, mask, config, 2, 0, num_samples=SAMPLES)  # the check, once
    widths = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: widths.append(tuple(args[0].shape)))
    try:
        torch.manual_seed(5)
        shared = sample(model, ids, mask, config, 2, 0, num_samples=SAMPLES)
    finally:
        hook.remove()
    assert widths[0] == (2, ids.shape[1] - 1)  # the prompts, once each
    assert widths[1] == (2 * SAMPLES, 1)  # every sample's first step: the last prompt column only
    R._PREFILL_VERDICTS[R._architecture_key(model)] = False
    torch.manual_seed(5)
    plain = sample(model, ids, mask, config, 2, 0, num_samples=SAMPLES)
    assert torch.equal(shared.input_ids, plain.input_ids)
    torch.testing.assert_close(shared.engine_logps, plain.engine_logps, atol=1e-5, rtol=0)


def test_a_cache_repeated_wrongly_is_caught_and_not_used(monkeypatch, caplog):
    """A cache whose rows do not line up with the samples (tiled instead of interleaved) gives other prompts'
    next-token distributions: the check sees it, says so once, and the samples come from the plain path."""
    from transformers.cache_utils import DynamicLayer

    def tiled(layer, repeats):
        layer.keys, layer.values = layer.keys.repeat(repeats, 1, 1, 1), layer.values.repeat(repeats, 1, 1, 1)

    monkeypatch.setattr(DynamicLayer, "batch_repeat_interleave", tiled)
    model = _tiny("llama")
    ids, mask = _prompts()
    config = SamplingConfig(max_new_tokens=6, logprobs=True)
    with caplog.at_level("INFO", logger="lit_align.generation.rollout"):
        rollout = sample(model, ids, mask, config, 2, 0, num_samples=SAMPLES)
        sample(model, ids, mask, config, 2, 0, num_samples=SAMPLES)
    assert R._PREFILL_VERDICTS[R._architecture_key(model)] is False
    assert sum("shared prompt prefill off" in r.message for r in caplog.records) == 1
    own, response = _own_logps(model, rollout)
    torch.testing.assert_close(rollout.engine_logps[:, 1:][response], own[response], atol=1e-5, rtol=0)


def test_nothing_is_shared_for_one_sample_or_a_one_token_prompt():
    model = _tiny("llama")
    ids, mask = _prompts()
    assert R.shared_prefill(model, ids, mask, 1) is None
    assert R.shared_prefill(model, ids[:, -1:], mask[:, -1:], SAMPLES) is None
    assert not R._PREFILL_VERDICTS
