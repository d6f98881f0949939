"""ThroughputMonitor: FLOPs per token, the GPU table, and the logged rates on a short CPU fit."""

from __future__ import annotations

import csv
import glob
from unittest import mock

import pytest
import torch

from support.cli import fit_args
from lit_align.callbacks.throughput import PEAK_FLOPS, device_peak_flops, flops_per_token
from lit_align.cli.app import build_cli
from lit_align.objectives import DPO
from lit_align.policy.with_reference import PolicyWithReference


def test_flops_per_token_counts_policy_training_and_reference_forward():
    """N = weights of the tiny policy; a live reference copy has the same N, so 6N + 2N = 8N; under the cache
    there is no reference forward, so 6N."""
    copy = DPO(policy=PolicyWithReference(reference="copy"))
    n = sum(p.numel() for p in copy.policy.policy.parameters())
    assert flops_per_token(copy) == 8 * n
    cached = DPO(policy=PolicyWithReference(reference="cache"))
    assert flops_per_token(cached) == 6 * n


def test_flops_per_token_of_a_reward_model_being_trained():
    """RewardModeling trains a scorer, not a PolicyWithReference: 6N over its weights, no reference forward."""
    from lit_align.objectives import RewardModeling

    module = RewardModeling()
    n = sum(p.numel() for p in module.scorer.parameters())
    assert flops_per_token(module) == 6 * n


def test_peak_flops_table_prefers_the_specific_name():
    """'NVIDIA H100 PCIe' must not be read as the SXM part (989 TFLOP/s); the CPU has no entry."""
    assert device_peak_flops(torch.device("cpu")) is None
    with mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 PCIe"):
        assert device_peak_flops(torch.device("cuda", 0)) == PEAK_FLOPS["H100 PCIe"] == 756e12
    with mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 80GB HBM3"):
        assert device_peak_flops(torch.device("cuda", 0)) == 989e12


def test_monitor_logs_rates_every_n_steps(run_dir):
    """Every optimizer step sees batch_size = 4 pairs, so samples/s times seconds/step is exactly 4, and each
    pair holds between 2 and 2 * max_length (64) real tokens."""
    build_cli(fit_args("dpo.yaml", "--data.init_args.batch_size=4", "--trainer.log_every_n_steps=1",
                       "--trainer.callbacks+=lit_align.callbacks.ThroughputMonitor",
                       "--trainer.callbacks.log_every_n_steps=2", steps=4))
    rows = [r for path in glob.glob("runs/test/logs/version_*/metrics.csv") for r in csv.DictReader(open(path))]
    perf = [r for r in rows if r.get("perf/samples_per_sec")]
    assert len(perf) >= 2  # steps 2 and 4 (the config's own monitor logs every 10 steps: not reached)
    for row in perf:
        step_time = float(row["perf/step_time"])
        assert float(row["perf/samples_per_sec"]) * step_time == pytest.approx(4, rel=1e-4)
        tokens_per_pair = float(row["perf/tokens_per_sec"]) / float(row["perf/samples_per_sec"])
        assert 2 <= tokens_per_pair <= 128
        assert float(row["perf/peak_memory_gb"]) > 0
        assert "perf/mfu" not in row or not row["perf/mfu"]  # no known peak FLOP/s on CPU
