"""Bookkeeping in full precision whatever the trainer's precision: logged means, running sums, the reference cache."""

from __future__ import annotations

import math

import pytest
import torch
from support.cli import fit_args
from lightning.pytorch.plugins.precision import HalfPrecision
from safetensors.torch import load_file

from lit_align.cli.app import build_cli
from lit_align.data import PreferenceDataModule
from lit_align.objectives.metrics import StageMeans
from lit_align.objectives.offline.pair_terms import RunningRewardMean
from lit_align.policy.with_reference import PolicyWithReference


def test_logged_means_accumulate_in_float32_inside_a_bf16_true_step():
    """With policy = pi_0 every DPO loss is ln 2; bf16-true made the metric (created on its first value, inside the
    step, under a bfloat16 default dtype) sum in bfloat16, and the mean read 0.7148 instead of 0.6931."""
    means = StageMeans()
    losses = torch.full((8,), math.log(2.0))  # float32, as the losses are (from float32 log-probs)
    with HalfPrecision("bf16-true").forward_context():  # what Lightning wraps training/validation steps in
        for _ in range(100):
            means.update({"loss": losses})
    got = means.compute("cpu")["loss"]
    assert got.dtype == torch.float32
    assert abs(got.item() - math.log(2.0)) < 1e-6
    means.reset()  # the states reset restores are float32 too
    values = torch.full((300,), 1.0 + 2**-10)
    with HalfPrecision("bf16-true").forward_context():
        means.update({"loss": values})
    assert abs(means.compute("cpu")["loss"].item() - (1.0 + 2**-10)) < 1e-6


def test_a_running_reward_mean_stays_float64_when_the_module_is_cast():
    """bf16-true casts every floating buffer to bfloat16 (``module.to(dtype)``), where a count stops at 256."""
    module = torch.nn.Module()
    module.mean = RunningRewardMean()
    HalfPrecision("bf16-true").convert_module(module)
    assert module.mean.total.dtype == module.mean.count.dtype == torch.float64
    for _ in range(300):
        module.mean(torch.ones(1))
    assert module.mean.count.item() == 300


@pytest.mark.extended
def test_the_reference_cache_is_computed_in_the_step_precision(run_dir):
    """Under bf16-mixed the live reference runs under autocast in the step: the cache must hold those values
    (computed outside the step it held float32 ones) and is keyed by the precision."""
    args = ("--model.init_args.policy.init_args.reference=cache", "--data.limit_rows=8", "--data.batch_size=8",
            "--export.enabled=false", "--trainer.precision=bf16-mixed")
    cli = build_cli(fit_args("dpo.yaml", *args, steps=1))
    cached = load_file(str(cli.model.policy.reference.cache.paths["train"]))["logps"]  # (rows, 2)
    dm = PreferenceDataModule(path="tiny", limit_rows=8, max_length=64, max_prompt_length=32, tokenizer="tiny")
    dm.setup("fit")
    batch = dm.collator()(dm.train_examples[:8])
    live = PolicyWithReference("tiny", reference="copy")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = live.completion_logps(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                         reference=True)
    with torch.no_grad():
        full, _ = live.completion_logps(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                        reference=True)
    got = cached[batch["index"]].T.reshape(-1)
    assert (logps.sum(-1) - full.sum(-1)).abs().max() > 1e-3  # the precisions do differ on this data
    torch.testing.assert_close(got, logps.sum(-1), atol=2e-3, rtol=0)
    key_32 = cli.model.policy.reference.cache.paths["train"].name
    cli = build_cli(fit_args("dpo.yaml", *args[:-1], steps=1))
    assert cli.model.policy.reference.cache.paths["train"].name != key_32
