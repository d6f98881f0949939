"""The paper's O(1/n) rate through the real objectives, on a short range of n (extended: about a minute).

A smaller version of ``benchmarks/convergence_lm.py`` (docs/convergence.md): PMLE (L-BFGS to convergence through
``lightning.Trainer``) on the 8-token LM oracle at n = 2^8, 2^10, 2^12 for three data sets (one data set's slope
over three values of n varies by about 0.2, their mean curve's much less), and DPO at the largest n. A regression
in PMLE's maths or defaults (the sigmoid's gamma, the sum of log-probs, a reference that leaks into the loss)
breaks the rate; one in DPO's breaks its level, which the closed-form optimum pi ∝ pi_0 * pi*^(gamma/beta)
predicts.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


@pytest.mark.extended
def test_pmle_forward_kl_falls_as_one_over_n_and_dpo_levels_off(tmp_path):
    bench = importlib.import_module("convergence_lm")
    convergence = importlib.import_module("convergence")
    setting = bench.Setting()
    setting.prepare(str(tmp_path))
    ns = [2**8, 2**10, 2**12]
    trials = (0, 1, 2)
    kls = [[bench.fit_offline("pmle", setting, n, trial, str(tmp_path))["forward_kl"] for n in ns] for trial in trials]
    mean = [sum(kl[i] for kl in kls) / len(trials) for i in range(len(ns))]
    slope = convergence.fitted_slope(ns, mean, ns[0])
    # measured (seeded, 61 s on 2 shared cores): slope of the mean -1.01 (the trials' own -0.96, -0.74, -1.20);
    # the theory's -1 with a margin of 0.35; PMLE fitted with gamma = 2 on these gamma = 1 labels gives -0.12
    assert -1.35 < slope < -0.65, (slope, kls)
    levels = bench.reference_levels(setting, trial=0)
    dpo = bench.fit_offline("dpo", setting, ns[-1], 0, str(tmp_path))["forward_kl"]
    # measured: DPO 0.1086 at n = 2^12 against its optimum's 0.1013 (pi_0: 0.419); PMLE there is 0.0050
    assert 0.8 * levels["closed_form"] < dpo < 1.5 * levels["closed_form"], (dpo, levels)
