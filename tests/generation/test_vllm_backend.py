"""``generation: vllm``: an in-process vLLM engine as the sampling backend of ``PolicyWithReference.generate``.

Run in the vLLM environment (``.venv-vllm``, the third step of ``.ci/run``): ``python -m pytest -q -m vllm``. Each
engine takes seconds to start, so the tests share one per policy. The HF backend (``lit_align.generation.rollout.sample``)
is the oracle: greedy decoding of the same weights must give the same tokens, the same cut after the first stop
token and the same ``Rollout`` layout. vLLM's CPU attention has no kernel for the embedded tiny model's heads of 16,
so these tests use the same model with heads of 32, saved as a local directory (as a user's model would be).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from lit_align.policy.with_reference import PolicyWithReference
from lit_align.generation.rollout import SamplingConfig, sample

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the vllm extra")]

TEXTS = ["The quick brown fox", "Hello", "Once upon a time there was a", "abc"]
OPTIONS = {"cpu_kv_cache_gib": 1}
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


def _prompts(tokenizer, texts=TEXTS):
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def _assert_same_rollout(got, expected):
    assert got.prompt_length == expected.prompt_length
    for field in ("input_ids", "attention_mask", "completion_mask", "ended", "prompt_index"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field


def save_tiny_with_wider_heads(directory) -> str:
    """The embedded tiny model with 2 heads of 32 instead of 4 of 16 (vLLM's CPU attention supports head sizes of
    32 and up), saved with its tokenizer as a local Hugging Face directory; same width, depth and vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models.loading import EMBEDDED_DIR, load_tokenizer

    config = AutoConfig.from_pretrained(EMBEDDED_DIR)
    config.update({"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_with_wider_heads(tmp_path_factory.mktemp("tiny32"))


@pytest.fixture(scope="module")
def policy(model_dir):
    return PolicyWithReference(model=model_dir, generation="vllm", vllm_options=OPTIONS)


def test_hf_backend_never_imports_vllm():
    """Choosing ``hf`` (the default) builds nothing and imports no engine."""
    import subprocess

    code = ("import sys; from lit_align.policy.with_reference import PolicyWithReference; p = PolicyWithReference(); "
            "import lit_align.generation; assert 'vllm' not in sys.modules, 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_heads_the_cpu_kernels_lack_are_refused_in_one_line():
    from lit_align.errors import UserError

    policy = PolicyWithReference(model="tiny", generation="vllm", vllm_options=OPTIONS)
    ids, mask = _prompts(policy.tokenizer)
    with pytest.raises(UserError, match="heads are 16 wide"):
        policy.generate(ids, mask, GREEDY)


def test_greedy_outputs_equal_the_hf_backend_token_for_token(policy):
    ids, mask = _prompts(policy.tokenizer)
    expected = sample(policy.policy, ids, mask, GREEDY, policy.stop_token_ids, policy.tokenizer.pad_token_id)
    got = policy.generate(ids, mask, GREEDY)
    _assert_same_rollout(got, expected)
    # greedy, two samples per prompt: both copies, rows grouped by prompt
    twice = policy.generate(ids, mask, GREEDY, num_samples=2)
    assert torch.equal(twice.input_ids, expected.input_ids.repeat_interleave(2, dim=0))
    assert twice.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_stop_tokens_cut_the_response_like_the_hf_backend(policy):
    """A stop token met mid-response ends that row only: it is kept, the rest is padding, ``ended`` is set."""
    ids, mask = _prompts(policy.tokenizer)
    pad = policy.tokenizer.pad_token_id
    free = sample(policy.policy, ids, mask, GREEDY, [policy.tokenizer.eos_token_id], pad)
    stop = int(free.response_ids[0, 3])  # a token the first row emits at its fourth step
    config = SamplingConfig(max_new_tokens=12, min_new_tokens=2, temperature=0.0)
    expected = sample(policy.policy, ids, mask, config, [stop], pad)
    got = policy.generation_backend(policy.policy, ids, mask, config, [stop], pad, 1)
    _assert_same_rollout(got, expected)
    assert bool(got.ended[0]) and int(got.lengths[0]) <= 4


def test_samples_follow_the_current_weights(policy):
    """After an update of the policy's weights the engine samples from the new ones, and only a change pushes."""
    ids, mask = _prompts(policy.tokenizer)
    backend = policy.generation_backend
    before = policy.generate(ids, mask, GREEDY)
    assert not backend.sync_weights(policy.policy), "unchanged weights were pushed again"
    with torch.no_grad():  # an optimizer step, in place like every optimizer's
        generator = torch.Generator().manual_seed(1)
        for parameter in policy.policy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    expected = sample(policy.policy, ids, mask, GREEDY, policy.stop_token_ids, policy.tokenizer.pad_token_id)
    got = policy.generate(ids, mask, GREEDY)
    assert not torch.equal(expected.input_ids, before.input_ids), "the perturbation did not change the samples"
    _assert_same_rollout(got, expected)


def test_prompts_longer_than_the_engine_are_refused_in_one_line(policy):
    from lit_align.errors import UserError

    ids, mask = _prompts(policy.tokenizer)
    policy.generate(ids, mask, GREEDY)  # the engine exists, sized for these prompts
    with pytest.raises(UserError, match="set policy.vllm_options.max_model_len to at least"):
        policy.generate(ids, mask, SamplingConfig(max_new_tokens=policy.generation_backend.max_model_len))


def test_seeded_sampling_is_reproducible_and_each_row_has_its_own_seed(policy):
    ids, mask = _prompts(policy.tokenizer)
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    torch.manual_seed(0)
    first = policy.generate(ids, mask, config, num_samples=4)
    torch.manual_seed(0)
    again = policy.generate(ids, mask, config, num_samples=4)
    assert torch.equal(first.input_ids, again.input_ids)
    responses = first.response_ids.view(len(TEXTS), 4, -1)
    assert any(len({tuple(r.tolist()) for r in group}) > 1 for group in responses), "all samples of a prompt equal"
    assert torch.equal(first.attention_mask[:, first.prompt_length:], first.response_mask)


def test_lora_pushes_merged_weights_and_the_base_for_the_reference(model_dir):
    """With LoRA the engine samples ``W + scaling * B @ A``; sampling pi_0 (adapters disabled) pushes ``W``."""
    policy = PolicyWithReference(model=model_dir, reference="lora", generation="vllm", vllm_options=OPTIONS)
    with torch.no_grad():  # B starts at zero: move it so the adapters matter
        generator = torch.Generator().manual_seed(2)
        for name, parameter in policy.policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    ids, mask = _prompts(policy.tokenizer)
    pad = policy.tokenizer.pad_token_id
    tuned = sample(policy.policy, ids, mask, GREEDY, policy.stop_token_ids, pad)
    with policy.policy.disable_adapter():
        base = sample(policy.policy, ids, mask, GREEDY, policy.stop_token_ids, pad)
    assert not torch.equal(tuned.input_ids, base.input_ids), "the adapters did not change the samples"
    _assert_same_rollout(policy.generate(ids, mask, GREEDY), tuned)
    _assert_same_rollout(policy.generate(ids, mask, GREEDY, from_reference=True), base)
    _assert_same_rollout(policy.generate(ids, mask, GREEDY), tuned)


def test_pdistill_fits_with_vllm_generation(run_dir, model_dir):
    """The shipped config with ``generation: vllm`` trains through the CLI; the engine sampled the batches and got
    the updated weights before the second one."""
    cli = _distill_through_the_engine(model_dir, steps=2)
    assert cli.trainer.global_step == 2
    _assert_the_engine_sampled_and_got_the_weights(cli)


def test_engine_logprobs_travel_with_the_samples_and_match_the_trainer(run_dir, model_dir):
    """With ``sampling.logprobs`` the engine's log-probs of the sampled tokens come back in ``Rollout.engine_logps``:
    on the weights just pushed they agree with the trainer's to rounding, at the sampling temperature."""
    policy = PolicyWithReference(model=model_dir, generation="vllm", vllm_options=OPTIONS)
    ids, mask = _prompts(policy.tokenizer)
    rollout = policy.generate(ids, mask, SamplingConfig(max_new_tokens=12, temperature=0.7, logprobs=True),
                              num_samples=2)
    assert rollout.engine_logps is not None and rollout.engine_logps.shape == rollout.input_ids.shape
    trainer, response = policy.completion_logps(rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                                                temperature=0.7)
    engine = rollout.engine_logps[:, 1:]
    assert (engine[~response] == 0).all() and (engine[response] <= 0).all()
    assert ((engine - trainer) * response).abs().max() < 1e-3


def test_importance_correction_with_the_engine_is_near_one_and_logged(run_dir, model_dir):
    """An objective with ``importance_correction`` on the vllm backend: the ratio of trainer to engine is 1 to
    rounding on the same weights, and the gap monitor logs the gap of the same numbers."""
    from support.cli import fit_args

    from lit_align.cli.app import build_cli

    cli = build_cli(fit_args("grpo.yaml", "--data.limit_rows=16", "--data.batch_size=4",
                             "--model.sampling.max_new_tokens=6", f"--model.policy.init_args.model={model_dir}",
                             "--model.policy.init_args.generation=vllm",
                             "--model.policy.init_args.vllm_options={cpu_kv_cache_gib: 1}",
                             "--model.importance_correction={mode: token_truncate, clip_max: 2.0}",
                             "--trainer.callbacks+=lit_align.callbacks.GenerationGapMonitor", steps=2))
    logged = cli.trainer.logged_metrics
    assert abs(float(logged["generation/logprob_gap"])) < 1e-3
    assert abs(float(logged["generation/is_ratio/mean"]) - 1) < 1e-3


def test_asynchronous_generation_with_the_engine(run_dir, model_dir):
    """``max_staleness: 1`` with the colocated engine: the worker thread samples through the engine, which is fed the
    generation copy's weights (refreshed from the trained ones), and every batch is trained on once."""
    cli = _distill_through_the_engine(model_dir, "--model.max_staleness=1", steps=3)
    assert cli.trainer.global_step == 3
    _assert_the_engine_sampled_and_got_the_weights(cli)
    assert cli.trainer.logged_metrics["train/generation/staleness"] <= 1


def _distill_through_the_engine(model_dir, *extra: str, steps: int):
    """The shipped distillation config, fit for ``steps`` through the colocated vllm engine on the tiny model."""
    from support.cli import fit_args

    from lit_align.cli.app import build_cli

    return build_cli(fit_args("pdistill.yaml", "--model.reward_model=tiny", "--data.limit_rows=16",
                              "--data.batch_size=4", "--model.sampling.max_new_tokens=6",
                              "--model.epochs_per_batch=1", *extra, f"--model.policy.init_args.model={model_dir}",
                              "--model.policy.init_args.generation=vllm",
                              "--model.policy.init_args.vllm_options={cpu_kv_cache_gib: 1}", steps=steps))


def _assert_the_engine_sampled_and_got_the_weights(cli) -> None:
    backend = cli.model.policy.generation_backend
    assert backend.llm is not None, "the vllm engine never sampled"
    assert backend.pushes >= 2, f"the updated weights were never pushed ({backend.pushes} push)"
