"""What the Hugging Face backend samples from is the ``SamplingConfig`` and nothing else.

``generate`` fills every field a call leaves unset from the model's own generation config, which a checkpoint
ships as ``generation_config.json`` (instruction-tuned models commonly set ``repetition_penalty``, ``top_k``,
``top_p`` and ``temperature`` there). Each of those would change the distribution the responses are drawn from
while every objective scores them as samples of the policy. The tests check the samples against the model's own
forward and against Hugging Face's native warpers, and that the sampled tokens' log-probs are recorded without
keeping a score tensor per new token.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from lit_align.models.loading import load_causal_lm
from lit_align.generation.rollout import SamplingConfig, sample

EOS, PAD = 2, 0
SAMPLES = 4


@pytest.fixture(scope="module")
def model():
    return load_causal_lm("tiny")


def _prompts(model):
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 6))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = PAD, 0  # left padding
    return ids, mask


def _own_logps(model, rollout, temperature):
    """The model's own log-probs of the sampled tokens at ``temperature``, (N, T-1), and the response mask."""
    with torch.no_grad():
        logits = model(rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=(rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    logps = (logits[:, :-1].float() / temperature).log_softmax(-1)
    logps = logps.gather(-1, rollout.input_ids[:, 1:, None]).squeeze(-1)
    return logps, rollout.completion_mask[:, 1:].bool()


CHECKPOINT_SETTINGS = {
    "repetition_penalty": {"repetition_penalty": 5.0},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 1},
    "truncation": {"top_k": 2, "top_p": 0.3, "typical_p": 0.3, "epsilon_cutoff": 0.05},
    "temperature": {"temperature": 0.2},
    "suppressed_tokens": {"suppress_tokens": list(range(5, 200)), "bad_words_ids": [[7], [8]]},
    "min_length": {"min_length": 40},
    "more_rows": {"num_return_sequences": 3},
}


@pytest.mark.parametrize("settings", list(CHECKPOINT_SETTINGS.values()), ids=list(CHECKPOINT_SETTINGS))
def test_the_checkpoints_generation_config_changes_nothing_sampled(model, settings):
    """Under any of these checkpoint settings the rows, the tokens drawn (same seed) and the engine's log-probs are
    those of the plain policy at the configured temperature, and the log-probs are the model's own."""
    ids, mask = _prompts(model)
    config = SamplingConfig(max_new_tokens=8, temperature=0.7, logprobs=True)
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig()
        torch.manual_seed(1)
        plain = sample(model, ids, mask, config, EOS, PAD, num_samples=SAMPLES)
        model.generation_config = GenerationConfig(do_sample=True, **settings)
        torch.manual_seed(1)
        shipped = sample(model, ids, mask, config, EOS, PAD, num_samples=SAMPLES)
    finally:
        model.generation_config = saved
    assert torch.equal(shipped.input_ids, plain.input_ids)
    assert torch.equal(shipped.engine_logps, plain.engine_logps)
    own, response = _own_logps(model, shipped, 0.7)
    assert response.any()
    torch.testing.assert_close(shipped.engine_logps[:, 1:][response], own[response], atol=1e-5, rtol=0)


@pytest.mark.parametrize("warping", [{"temperature": 0.7}, {"temperature": 1.3, "top_k": 5},
                                     {"temperature": 0.9, "top_p": 0.8, "top_k": 20, "min_new_tokens": 3}])
def test_warpers_and_recorded_logprobs_match_hugging_faces_own(model, warping):
    """The backend's temperature, top-k and top-p draw the same tokens as ``generate``'s own warpers under the same
    seed, its log-probs equal those of ``generate``'s processed scores, and ``generate`` is never asked to keep
    those scores (one (rows, vocabulary) tensor per new token)."""
    ids, mask = _prompts(model)
    config = SamplingConfig(max_new_tokens=10, logprobs=True, **warping)
    reps = (ids.repeat_interleave(SAMPLES, 0), mask.repeat_interleave(SAMPLES, 0))
    torch.manual_seed(3)
    native = model.generate(input_ids=reps[0], attention_mask=reps[1], do_sample=True, max_new_tokens=10,
                            min_new_tokens=warping.get("min_new_tokens", 0), temperature=warping["temperature"],
                            top_k=warping.get("top_k"), top_p=warping.get("top_p"), eos_token_id=EOS,
                            pad_token_id=PAD, output_scores=True, return_dict_in_generate=True)
    asked = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        asked.append(kwargs)
        return real_generate(*args, **kwargs)

    model.generate = spy
    try:
        torch.manual_seed(3)
        rollout = sample(model, ids, mask, config, EOS, PAD, num_samples=SAMPLES)
    finally:
        del model.generate
    assert not asked[0].get("output_scores") and not asked[0].get("output_logits")
    width = ids.shape[1]
    assert torch.equal(rollout.input_ids[:, width:][rollout.response_mask.bool()],
                       native.sequences[:, width:][rollout.response_mask.bool()])
    for step, scores in enumerate(native.scores):
        live = rollout.response_mask[:, step].bool()
        expected = scores.log_softmax(-1).gather(-1, native.sequences[:, width + step, None]).squeeze(-1)
        torch.testing.assert_close(rollout.engine_logps[live, width + step], expected[live], atol=1e-5, rtol=0)
    assert (rollout.engine_logps[~rollout.completion_mask.bool()] == 0).all()


def test_no_logprobs_no_recorder_and_greedy_has_none(model):
    """Without ``logprobs`` nothing is recorded; greedy decoding draws from no distribution and records none, and
    it too ignores the checkpoint's settings (a repetition penalty would change the argmax)."""
    ids, mask = _prompts(model)
    assert sample(model, ids, mask, SamplingConfig(max_new_tokens=4), EOS, PAD).engine_logps is None
    greedy = SamplingConfig(max_new_tokens=12, temperature=0, logprobs=True)
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig()
        plain = sample(model, ids, mask, greedy, EOS, PAD)
        model.generation_config = GenerationConfig(repetition_penalty=50.0, no_repeat_ngram_size=1)
        shipped = sample(model, ids, mask, greedy, EOS, PAD)
    finally:
        model.generation_config = saved
    assert plain.engine_logps is None and torch.equal(shipped.input_ids, plain.input_ids)


def test_warping_is_read_once_for_every_backend():
    """``SamplingConfig.warping``: what each setting changes, None where it changes nothing."""
    assert tuple(SamplingConfig().warping) == (None, None, None, False)
    assert tuple(SamplingConfig(temperature=0.5, top_k=3, top_p=0.9).warping) == (0.5, 3, 0.9, False)
    assert tuple(SamplingConfig(temperature=0, top_k=3, top_p=0.9).warping) == (None, None, None, True)
    assert SamplingConfig(logprobs=True).reports_logprobs
    assert not SamplingConfig(temperature=0, logprobs=True).reports_logprobs
