"""The convergence benchmark: a small sweep writes its CSV and plot; the tabular solvers reach known optima."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_sweep_writes_csv_and_png(tmp_path):
    convergence = _load("convergence")
    args = ["--quick", "--max-exp", "8", "--trials", "2", "--fit-from", "32", "--out", str(tmp_path)]
    summary = convergence.main(args)
    rows = list(csv.DictReader(open(tmp_path / "convergence.csv")))
    assert {r["objective"] for r in rows} == set(convergence.OBJECTIVES)
    assert sorted({int(r["n"]) for r in rows}) == [32, 64, 128, 256]
    assert len(rows) == 4 * len(convergence.OBJECTIVES) * 2 and all(float(r["forward_kl"]) >= 0 for r in rows)
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    assert all(math.isfinite(s) for name, s in summary["slopes"].items() if name != "distill_oracle")
    # RLHF's best beta is checked against the closed form of its optimum
    assert max(float(r["closed_form_gap"]) for r in rows if r["objective"] == "rlhf_tuned") < 1e-4


def test_reward_maximisation_reaches_the_prior_smoothed_closed_form():
    """Reverse KL (PAPER 2d): the optimum of -E R - g H + b KL is pi ∝ pi0^(b/(b+g)) exp(R/(b+g))."""
    fit = _load("tabular_fit")
    from lit_align.data.tabular_oracle import TabularOracle

    oracle = TabularOracle.toy(trials=2, std=1.0, seed=1)
    reward = torch.randn(oracle.target_logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for beta, gamma in ((0.5, 0.5), (0.0, 0.5), (1.0, 0.0)):
        fitted = fit.fit_regularised_reward_max(oracle, reward, beta, gamma).softmax(-1)
        closed = fit.closed_form_reward_max(oracle, reward, beta, gamma).softmax(-1)
        assert torch.allclose(fitted, closed, atol=1e-5), (beta, gamma)


def test_pmle_and_oracle_distillation_converge_to_the_target():
    """With many pairs PMLE gets close to pi*, and distillation from the true reward recovers it exactly."""
    fit = _load("tabular_fit")
    from lit_align.data.tabular_oracle import TabularOracle

    oracle = TabularOracle.toy(trials=2, std=1.0, gamma=1.0, seed=2)
    pairs = oracle.sample_pairs(20000, torch.Generator().manual_seed(0))
    start = oracle.forward_kl(oracle.reference_logits)
    # expected KL ~ free parameters / (2 n Fisher information) ~ 90 / (2 * 20000 * 0.2) ~ 0.01
    assert (oracle.forward_kl(fit.fit_pmle(oracle, pairs, ridge=1.0)) < 0.05 * start).all()
    assert (oracle.forward_kl(fit.fit_distillation(oracle, pairs, oracle.reward(), ridge=1e-6)) < 1e-6).all()


def test_degeneracy_dpo_collapses_while_pmle_with_kl_does_not():
    convergence = _load("convergence")
    result = convergence.degeneracy(trials=4)
    start = result["reference"]["entropy"]
    assert result["dpo"]["entropy"] < 0.5 * start
    assert result["pmle_kl"]["entropy"] > 0.85 * start
    assert result["dpo"]["kl_to_reference"] > 5 * result["pmle_kl"]["kl_to_reference"]
