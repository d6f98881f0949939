"""The monitoring callbacks, driven through a short fit, checked against independent computations."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lit_align.callbacks import EntropyMonitor, KLMonitor, ModeCollapseMonitor, OracleMonitor, SampleLogger
from lit_align.callbacks.collapse import distinct_n
from lit_align.cli.app import build_cli


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """DPO on the oracle task (1-token responses) for 4 steps with every monitor measuring every 2 steps."""
    root = tmp_path_factory.mktemp("fit")
    callbacks = [
        KLMonitor(every_n_steps=2, num_prompts=4, num_samples=256, sampling=_sampling(max_new_tokens=1)),
        EntropyMonitor(every_n_steps=2, num_prompts=4, num_samples=2, sampling=_sampling(max_new_tokens=1)),
        ModeCollapseMonitor(every_n_steps=2, num_prompts=4, num_samples=3,
                            sampling=_sampling(max_new_tokens=4, temperature=0.0)),
        OracleMonitor(every_n_steps=2),
        SampleLogger(every_n_steps=2, num_prompts=2, num_samples=2, sampling=_sampling(max_new_tokens=3)),
    ]
    cli = build_cli([
        "--model=DPO", "--model.learning_rate=0.02", "--data=OracleDataModule", "--data.num_pairs=64",
        "--data.val_pairs=8", "--data.num_prompts=4", "--data.response_length=1", "--trainer.max_steps=4",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}", "--seed_everything=0",
    ], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.trainer, cli.model, cli.datamodule, callbacks


def _sampling(**kwargs):
    from lit_align.generation.rollout import SamplingConfig

    return SamplingConfig(**kwargs)


def _first_token_logits(model, examples):
    """Independent next-token logits after each probe prompt (no padding: prompts share one length)."""
    ids = torch.tensor([ex.prompt_ids for ex in examples])
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -1].float()


def test_every_monitor_measured_at_start_and_every_two_steps(fitted):
    trainer, _, _, callbacks = fitted
    for callback in callbacks:
        assert [step for step, _ in callback.history] == [0, 2, 4], type(callback).__name__
    assert "monitor/kl_token" in trainer.callback_metrics and "oracle/forward_kl" in trainer.callback_metrics


def test_kl_monitor_matches_exact_one_token_kl(fitted):
    """With 1-token responses, KL(pi || pi0) is the vocabulary KL after the prompt: kl_token is exact, and the
    k1 / k3 sample means agree with it within 4 standard errors of their 256 samples per prompt."""
    trainer, module, datamodule, (kl_monitor, *_) = fitted
    examples = datamodule.val_examples[:4]
    p = _first_token_logits(module.policy.policy, examples).log_softmax(-1)
    q = _first_token_logits(module.policy.reference.weights, examples).log_softmax(-1)
    exact = (p.exp() * (p - q)).sum(-1)  # (4,)
    values = kl_monitor.history[-1][1]
    assert exact.mean() > 1e-3  # the policy has moved
    assert values["monitor/kl_token"] == pytest.approx(exact.mean().item(), rel=1e-4, abs=1e-6)
    log_ratio = p - q
    for name, per_token in (("kl_k1", log_ratio), ("kl_k3", torch.expm1(-log_ratio) + log_ratio)):
        mean = (p.exp() * per_token).sum(-1).mean()
        std = ((p.exp() * (per_token - (p.exp() * per_token).sum(-1, keepdim=True)) ** 2).sum(-1).mean() / 1024).sqrt()
        assert abs(values[f"monitor/{name}"] - mean.item()) < 4 * std.item() + 1e-6
    assert kl_monitor.history[0][1]["monitor/kl_token"] == pytest.approx(0.0, abs=1e-6)  # policy == reference


def test_entropy_monitor_matches_independent_entropies(fitted):
    _, module, datamodule, (_, entropy_monitor, *_) = fitted
    examples = datamodule.val_examples[:4]
    logp = _first_token_logits(module.policy.policy, examples).log_softmax(-1)
    values = entropy_monitor.history[-1][1]
    assert values["monitor/entropy"] == pytest.approx(-(logp.exp() * logp).sum(-1).mean().item(), rel=1e-4)
    # along the data's chosen (1-token) completions: the same first-token distributions
    assert values["monitor/entropy_data"] == pytest.approx(values["monitor/entropy"], rel=1e-4)


def test_mode_collapse_monitor_counts_greedy_responses(fitted):
    """Greedy sampling gives num_samples identical responses per prompt: unique_fraction = 1/3 exactly, and
    distinct-n equal those of an independent greedy decoding of the final policy."""
    _, module, datamodule, (_, _, collapse, *_) = fitted
    values = collapse.history[-1][1]
    assert values["collapse/unique_fraction"] == pytest.approx(1 / 3)
    eos = module.tokenizer.eos_token_id
    responses = []
    for example in datamodule.val_examples[:4]:
        ids = torch.tensor([example.prompt_ids])
        response = []
        with torch.no_grad():
            for _ in range(4):
                token = module.policy.policy(input_ids=ids).logits[0, -1].argmax().item()
                response.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], 1)
                if token == eos:
                    break
        responses += [response] * 3
    for n in (1, 2):
        distinct, total = distinct_n(responses, n)
        assert values[f"collapse/distinct_{n}"] == pytest.approx(distinct / max(total, 1))
    assert values["collapse/mean_length"] == pytest.approx(sum(map(len, responses)) / len(responses))
    start = collapse.history[0][1]["collapse/mean_length"]
    assert values["collapse/length_drift"] == pytest.approx(values["collapse/mean_length"] - start)


def test_oracle_monitor_matches_exact_one_token_kls(fitted):
    _, module, datamodule, (*_, oracle, _) = fitted
    task = datamodule.task
    with torch.no_grad():
        target = task.target(input_ids=task.prompts).logits[:, -1].float().log_softmax(-1)
        policy = module.policy.policy(input_ids=task.prompts).logits[:, -1].float().log_softmax(-1)
    values = oracle.history[-1][1]
    forward = (target.exp() * (target - policy)).sum(-1).mean().item()
    reverse = (policy.exp() * (policy - target)).sum(-1).mean().item()
    assert values["oracle/forward_kl"] == pytest.approx(forward, rel=1e-4)
    assert values["oracle/reverse_kl"] == pytest.approx(reverse, rel=1e-4)
    assert oracle.history[0][1]["oracle/forward_kl"] != pytest.approx(forward, rel=1e-3)  # it moved


def test_sample_logger_writes_a_table(fitted):
    trainer, *_ , callbacks = fitted
    logger = callbacks[-1]
    rows = [json.loads(line) for line in open(logger.path)]
    assert [r["step"] for r in rows] == [0] * 4 + [2] * 4 + [4] * 4
    assert all(1 <= r["length"] <= 3 and isinstance(r["response"], str) and r["prompt"] for r in rows)
    assert logger.path.startswith(trainer.log_dir)


def test_distinct_n_by_hand():
    """[1,2,1] and [1,2]: unigrams 1,2,1,1,2 -> 2 distinct of 5; bigrams (1,2),(2,1),(1,2) -> 2 of 3."""
    assert distinct_n([[1, 2, 1], [1, 2]], 1) == (2, 5)
    assert distinct_n([[1, 2, 1], [1, 2]], 2) == (2, 3)


def test_mode_collapse_warns_and_stops_below_the_threshold():
    monitor = ModeCollapseMonitor(min_fraction=0.5, watch=["entropy"], stop_on_collapse=True)
    trainer = SimpleNamespace(callback_metrics={}, loggers=[], global_step=0, should_stop=False)
    monitor.after_measure(trainer, {"collapse/entropy": 2.0, "collapse/mean_length": 5.0})
    trainer.global_step = 10
    monitor.after_measure(trainer, {"collapse/entropy": 1.2, "collapse/mean_length": 6.0})
    assert not trainer.should_stop and trainer.callback_metrics["collapse/length_drift"].item() == 1.0
    with pytest.warns(UserWarning, match="mode collapse: entropy"):
        monitor.after_measure(trainer, {"collapse/entropy": 0.9, "collapse/mean_length": 6.0})
    assert trainer.should_stop and monitor.collapsed == ["entropy"]


def test_monitors_measure_the_distribution_they_sample():
    """Sampling at T = 0.5 with one-token responses: kl_token and entropy are the exact KL(pi_T || pi0_T) and
    H(pi_T) of the first-token distributions softmax(logits / T), whatever tokens were drawn."""
    from lit_align.data.formats import Example
    from lit_align.objectives import DPO

    torch.manual_seed(0)
    module = DPO()
    with torch.no_grad():
        for p in module.policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = [Example(i, [1, 40 + i, 41 + i], []) for i in range(3)]
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    sampling = _sampling(max_new_tokens=1, temperature=0.5)
    with torch.no_grad():
        kl = KLMonitor(num_samples=4, sampling=sampling).measure(trainer, module, examples)
        entropy = EntropyMonitor(num_samples=4, sampling=sampling, data_completions=False).measure(
            trainer, module, examples)
        p = (_first_token_logits(module.policy.policy, examples) / 0.5).log_softmax(-1)
        q = (_first_token_logits(module.policy.reference.weights, examples) / 0.5).log_softmax(-1)
    value = lambda totals, name: (totals[name][0] / totals[name][1]).item()  # noqa: E731
    assert value(kl, "kl_token") == pytest.approx((p.exp() * (p - q)).sum(-1).mean().item(), rel=1e-4)
    assert value(entropy, "entropy") == pytest.approx(-(p.exp() * p).sum(-1).mean().item(), rel=1e-4)


def test_kl_and_entropy_monitors_refuse_greedy_sampling():
    from lit_align.errors import UserError

    for cls in (KLMonitor, EntropyMonitor):
        with pytest.raises(UserError, match=rf"^{cls.__name__}: sampling.temperature=0 is greedy"):
            cls(sampling=_sampling(temperature=0.0))
