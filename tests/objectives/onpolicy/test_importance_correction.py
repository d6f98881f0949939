"""The engine/trainer mismatch correction (``importance_correction``) against an engine perturbed by a known ratio.

The Hugging Face backend is wrapped so that the engine reports exactly the trainer's log-probs of the sampled
tokens, less ln 2 on the first response token of every row and on the second one of row 0: the ratio pi / mu is
then 2 on those tokens and 1 everywhere else, so each mode's weights are known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from support.onpolicy import LengthReward, prompt_batch

from lit_align.errors import UserError
from lit_align.generation.rollout import SamplingConfig, sample
from lit_align.losses.importance import ImportanceCorrection
from lit_align.objectives import GRPO, REBEL, RLHF, RLOO
from lit_align.objectives.onpolicy import grpo as grpo_module
from lit_align.objectives.onpolicy import rlhf as rlhf_module

SAMPLING = SamplingConfig(max_new_tokens=5, min_new_tokens=2, temperature=0.8)


def perturbed_engine(module):
    """A backend that samples with Hugging Face ``generate`` and reports the trainer's log-probs less ln 2 on the
    known tokens; returns the (N, T-1) expected token ratio."""
    expected = {}

    def backend(model, prompt_ids, prompt_mask, config, *args, **kwargs):
        rollout = sample(model, prompt_ids, prompt_mask, config, *args, **kwargs)
        trainer, mask = module.policy.completion_logps(rollout.input_ids, rollout.attention_mask,
                                                       rollout.completion_mask, temperature=config.temperature)
        engine = torch.zeros(rollout.input_ids.shape)
        engine[:, 1:] = trainer
        first = rollout.prompt_length  # the first response token's column
        engine[:, first] -= math.log(2)
        engine[0, first + 1] -= math.log(2)
        rollout.engine_logps = engine
        ratio = torch.ones_like(trainer)
        ratio[:, first - 1] = 2.0
        ratio[0, first] = 2.0
        expected["ratio"], expected["mask"] = ratio * mask, mask
        return rollout

    module.policy.generation_backend = backend
    return expected


def capture(monkeypatch, namespace, name):
    """Wrap ``namespace.name`` to record the arguments of each call."""
    calls = []
    real = getattr(namespace, name)
    monkeypatch.setattr(namespace, name, lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    return calls


def token_and_sequence_weights(ratio, mask, mode):
    """The expected weights and kept tokens (clip_max 3): token_truncate keeps the ratio 2 (under the cap);
    sequence_mask keeps a row of one perturbed token at weight 2 and drops row 0 (ratio 4 > 3)."""
    if mode == "token_truncate":
        return ratio, mask
    sequence = torch.where(mask, ratio, torch.ones_like(ratio)).prod(-1, keepdim=True)  # (N, 1)
    keep = mask & (sequence <= 3)
    return (sequence * keep).expand_as(ratio) * keep, keep


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_grpo_weighs_each_policy_term_by_the_known_ratio(monkeypatch, mode):
    torch.manual_seed(0)
    module = GRPO(reward_model=LengthReward(), sampling=SAMPLING, num_samples=2,
                  importance_correction=ImportanceCorrection(mode=mode, clip_max=3.0))
    expected = perturbed_engine(module)
    calls = capture(monkeypatch, grpo_module, "grpo_token_losses")
    exp = module.make_experience(prompt_batch(module))
    module.experience_loss(exp)
    (args, kwargs), = calls
    weights, keep = token_and_sequence_weights(expected["ratio"], expected["mask"], mode)
    assert torch.equal(args[3], keep)  # the mask the loss is reduced over
    torch.testing.assert_close(kwargs["token_mask"], weights, rtol=1e-5, atol=1e-6)
    assert exp.importance.ratio_max.item() == pytest.approx(2.0 if mode.startswith("token") else 4.0, rel=1e-5)
    if mode == "sequence_mask":
        assert exp.importance.masked_fraction.item() == pytest.approx(1 / exp.num_rows)
        assert not keep[0].any() and keep[1:].any(-1).all()


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_rlhf_weighs_each_clipped_term_by_the_known_ratio(monkeypatch, mode):
    torch.manual_seed(0)
    module = RLHF(reward_model=LengthReward(), sampling=SAMPLING, missing_eos_penalty=None,
                  importance_correction=ImportanceCorrection(mode=mode, clip_max=3.0))
    expected = perturbed_engine(module)
    exp = module.make_experience(prompt_batch(module))
    policy = capture(monkeypatch, rlhf_module, "ppo_policy_loss")
    means = capture(monkeypatch, rlhf_module, "masked_mean")
    module.experience_loss(exp)
    weights, keep = token_and_sequence_weights(expected["ratio"], expected["mask"], mode)
    unweighted = rlhf_module.ppo_policy_loss(*policy[0][0]).losses
    (terms, mask), _ = means[0]  # the policy loss's token mean
    assert torch.equal(mask, keep)
    torch.testing.assert_close(terms, unweighted * weights, rtol=1e-5, atol=1e-7)


def test_rloo_sequence_terms_take_the_product_of_token_weights(monkeypatch):
    """RLOO's sequence-level loss has one policy-gradient term per response: it is weighted by the product of
    its tokens' weights (token_truncate, cap 3: 4 capped per token at 2 each, so row 0 weighs 4, the others 2)."""
    torch.manual_seed(0)
    module = RLOO(kl_coef=0.0, reward_model=LengthReward(), sampling=SAMPLING, num_samples=2,
                  importance_correction=ImportanceCorrection(mode="token_truncate", clip_max=3.0))
    perturbed_engine(module)
    exp = module.make_experience(prompt_batch(module))
    exp.advantages = torch.linspace(0.5, 2.0, exp.num_rows)  # all positive: a loss that cannot cancel to 0
    corrected, _ = module.experience_loss(exp)
    expected_weights = torch.full((exp.num_rows,), 2.0)
    expected_weights[0] = 4.0
    torch.testing.assert_close(exp.sequence_weights(), expected_weights, rtol=1e-5, atol=1e-6)
    exp.importance = None
    uncorrected = rloo_losses(module, exp)
    torch.testing.assert_close(corrected, (uncorrected * expected_weights).mean(), rtol=1e-5, atol=1e-6)


def rloo_losses(module, exp):
    from lit_align.losses import rloo_loss

    with torch.no_grad():
        logps = module.policy_token_logps(exp)
    return rloo_loss(logps, exp.old_logps, exp.advantages, exp.response_mask, module.clip_range, module.epsilon_high)


def test_without_the_engine_log_probs_the_correction_is_refused_and_pairs_refuse_it():
    module = GRPO(reward_model=LengthReward(), sampling=SAMPLING, num_samples=2,
                  importance_correction=ImportanceCorrection())
    assert module.sampling.logprobs  # the engine is asked for them
    module.policy.generation_backend = lambda *a, **k: sample(*a[:3], SAMPLING, *a[4:], **k)  # never reports them
    with pytest.raises(UserError, match="needs the generation engine's log-probs"):
        module.make_experience(prompt_batch(module))
    with pytest.raises(UserError, match="REBEL: importance_correction .* has none"):
        REBEL(reward_model=LengthReward(), sampling=SAMPLING, importance_correction=ImportanceCorrection())


def test_hf_engine_log_probs_are_those_of_the_distribution_sampled():
    """The Hugging Face backend's engine log-probs equal the trainer's at the sampling temperature (same weights,
    no truncation), 0 off the response."""
    torch.manual_seed(0)
    module = GRPO(reward_model=LengthReward(), sampling=SamplingConfig(max_new_tokens=5, temperature=0.8),
                  num_samples=2, importance_correction=ImportanceCorrection())
    exp = module.make_experience(prompt_batch(module))
    engine = exp.rollout.engine_logps[:, 1:]
    assert (engine[~exp.response_mask] == 0).all()
    torch.testing.assert_close(engine[exp.response_mask], exp.old_logps[exp.response_mask], rtol=1e-4, atol=1e-4)
    assert exp.importance.ratio_max.item() == pytest.approx(1.0, abs=1e-3)
    assert module.last_logprob_gap == pytest.approx(0.0, abs=1e-4)
