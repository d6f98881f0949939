"""The LM-oracle convergence benchmark: its sweep writes the expected rows and plot, and an on-policy fit through
the real objective moves the small LM towards pi*. Rates are not asserted here (tests/benchmarks/test_convergence_lm_rate.py
does, in the extended step)."""

from __future__ import annotations

import csv
import importlib
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _benchmark():
    return importlib.import_module("convergence_lm")  # benchmarks/ is on the path: a dataclass needs its module


def test_small_sweep_writes_one_row_per_fit_and_the_plot(tmp_path):
    import logging

    bench = _benchmark()
    levels = {name: logging.getLogger(name).level for name in ("lightning", "lightning.pytorch", "lightning.fabric")}
    args = ["--min-exp", "5", "--max-exp", "6", "--exp-step", "1", "--trials", "2", "--objectives", "pmle",
            "--no-oracle", "--max-offline-steps", "2", "--lbfgs-iter", "5", "--fit-from", "32", "--out", str(tmp_path)]
    summary = bench.main(args)
    rows = list(csv.DictReader(open(tmp_path / "convergence_lm.csv")))
    assert sorted((int(r["n"]), r["objective"], int(r["trial"])) for r in rows) == sorted(
        (n, name, t) for n in (32, 64) for name in ("pmle", "pi0", "closed_form") for t in (0, 1))
    kls = {(int(r["n"]), r["objective"], int(r["trial"])): float(r["forward_kl"]) for r in rows}
    assert all(math.isfinite(v) and v >= -1e-6 for v in kls.values())
    for trial in (0, 1):
        # pi_0 is measured, not assumed: the small pi_0 against the sharper target is far from zero, and DPO's
        # population optimum pi_0 * pi* lies between the two
        pi0, optimum = kls[(32, "pi0", trial)], kls[(32, "closed_form", trial)]
        assert pi0 > 0.1 and 0 < optimum < pi0
        # a trained policy is no longer pi_0 (the fit really ran through the objective)
        assert all(abs(kls[(n, "pmle", trial)] - pi0) > 1e-4 for n in (32, 64))
    assert set(summary["slopes"]) == {"pmle"}
    assert all(math.isfinite(m) and math.isfinite(se) for m, se in summary["slopes"].values())
    slopes = {r["objective"]: r for r in csv.DictReader(open(tmp_path / "convergence_lm_slopes.csv"))}
    assert set(slopes) == {"pmle", "pi0", "closed_form"} and slopes["pi0"]["slope"] == ""
    assert (tmp_path / "convergence_lm.png").stat().st_size > 10_000
    # the sweep silences Lightning for itself only: later runs in this process still log their info lines
    assert {name: logging.getLogger(name).level for name in levels} == levels
    # --replot rebuilds the same slopes from the CSV, into a folder it creates
    again = bench.main(["--replot", str(tmp_path / "convergence_lm.csv"), "--fit-from", "32",
                        "--out", str(tmp_path / "replot")])
    assert again["slopes"] == summary["slopes"]
    assert (tmp_path / "replot" / "convergence_lm.png").is_file()


def test_distillation_with_the_oracle_reward_moves_towards_the_target(tmp_path):
    """No statistical error (the reward is R* = gamma ln pi*): a short on-policy fit must end closer to pi* than
    pi_0, measured with the exact forward KL."""
    bench = _benchmark()
    setting = bench.Setting(max_steps=20, onpolicy_batch=32)
    setting.prepare(str(tmp_path))
    start = bench.reference_levels(setting, trial=0)["pi0"]
    end = bench.fit_onpolicy("distill", setting, setting.data(1, trial=0).reward(), trial=0, root=str(tmp_path))
    assert end["steps"] == 20 and not end["converged"]
    assert end["forward_kl"] < 0.1 * start, (start, end)  # measured: 0.419 -> 0.0039


def test_tabular_replot_reads_the_csv_back(tmp_path):
    """``benchmarks/convergence.py --replot`` redraws the figure from a CSV: rows that follow KL = c / n exactly
    (c differing per objective and trial) give slope -1 for every objective."""
    convergence = importlib.import_module("convergence")
    path = tmp_path / "convergence.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["n", "objective", "trial", "forward_kl", "beta", "closed_form_gap"])
        writer.writeheader()
        for k in range(5, 10):
            for i, name in enumerate(convergence.OBJECTIVES):
                for trial in range(2):
                    rlhf = name == "rlhf_tuned"
                    writer.writerow({"n": 2**k, "objective": name, "trial": trial,
                                     "forward_kl": (1 + i + trial) / 2**k, "beta": 2.0 if rlhf else "",
                                     "closed_form_gap": 0.0 if rlhf else ""})
    summary = convergence.main(["--replot", str(path), "--fit-from", "32", "--out", str(tmp_path)])
    assert all(abs(slope + 1) < 1e-9 for slope in summary["slopes"].values())
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
