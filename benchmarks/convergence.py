"""Convergence of every objective to the target LM on the paper's toy oracle: forward KL against n.

    python benchmarks/convergence.py                 # full sweep, n = 2^5 .. 2^18, 16 trials (~10 min on 2 cores)
    python benchmarks/convergence.py --quick         # n = 2^5 .. 2^12, 4 trials (CI, well under 2 minutes)
    python benchmarks/convergence.py --degeneracy    # only the DPO-vs-PMLE degeneracy setting
    python benchmarks/convergence.py --replot docs/convergence.csv   # redraw docs/convergence.png from the CSV

``--quick`` checks the machinery only and cannot show a rate: on this toy every estimator stays worse than
pi_0 (forward KL 8.8e-3) until n = 2^16, and up to n ≈ 2^10 the KL still rises with n (see docs/convergence.md),
so its slopes, fitted on n >= 2^9, describe the pre-asymptotic regime.

For each n and trial: draw n pairs from the tabular oracle (10 prompts x 10 responses, logits ~ N(0, 0.1^2),
gamma = 0.5, pairs from pi_0), train PMLE, preference distillation (learned and oracle reward), reverse KL,
DPO and RLHF with lit-align's losses on tabular policies (``tabular_fit.py``), and measure
E_x KL(pi* || pi_hat). Writes ``<out>/convergence.csv`` (one row per n, objective, trial), the plot
``<out>/convergence.png`` (log-log, one line per objective, slope fitted on n >= ``--fit-from`` in the
legend; right panel: the toy of the paper's Fig. 1, RLHF with beta tuned per n against reverse KL) and
``<out>/convergence_slopes.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tabular_fit import (  # noqa: E402
    closed_form_reward_max, fit_distillation, fit_dpo, fit_pmle, fit_regularised_reward_max, fit_reward,
)

from lit_align.data.tabular_oracle import TabularOracle, entropy, kl  # noqa: E402

OBJECTIVES = ["pmle", "distill_learned", "distill_oracle", "reverse_kl", "dpo", "rlhf_tuned"]
LABELS = {
    "pmle": "PMLE", "distill_learned": "distillation (learned reward)",
    "distill_oracle": "distillation (oracle reward)",
    "reverse_kl": "reverse KL (beta = 0)", "dpo": "DPO (beta = gamma)", "rlhf_tuned": "RLHF (beta tuned per n)",
}


def run_sweep(exponents: list[int], trials: int, ridge: float, seed: int, progress=None) -> list[dict]:
    """Forward KL of every objective for n = 2^k, k in ``exponents``; one row per (n, objective, trial)."""
    oracle = TabularOracle.toy(trials=trials, seed=seed)
    gamma = oracle.gamma
    betas = [gamma * 2.0**j for j in range(-3, 9)]  # the RLHF grid; the best is chosen with the oracle, as in Fig. 1
    generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    for k in exponents:
        n = 2**k
        pairs = oracle.sample_pairs(n, generator)
        reward = fit_reward(oracle, pairs, ridge)
        fitted = {
            "pmle": fit_pmle(oracle, pairs, ridge),
            "distill_learned": fit_distillation(oracle, pairs, reward, ridge),
            "distill_oracle": fit_distillation(oracle, pairs, oracle.reward(), ridge),
            "reverse_kl": fit_regularised_reward_max(oracle, reward, beta=0.0, entropy=gamma),
            "dpo": fit_dpo(oracle, pairs, beta=gamma, ridge=ridge),
        }
        results = {name: oracle.forward_kl(logits) for name, logits in fitted.items()}
        # RLHF: the beta of the grid with the lowest mean forward KL at this n (checked against the closed form)
        rlhf = {beta: oracle.forward_kl(fit_regularised_reward_max(oracle, reward, beta, 0.0)) for beta in betas}
        best_beta = min(rlhf, key=lambda b: rlhf[b].mean().item())
        results["rlhf_tuned"] = rlhf[best_beta]
        gap = (fit_regularised_reward_max(oracle, reward, best_beta, 0.0).log_softmax(-1)
               - closed_form_reward_max(oracle, reward, best_beta, 0.0).log_softmax(-1)).abs().max().item()
        for name, values in results.items():
            for trial, value in enumerate(values.tolist()):
                rlhf_row = name == "rlhf_tuned"
                rows.append({"n": n, "objective": name, "trial": trial, "forward_kl": value,
                             "beta": best_beta if rlhf_row else "", "closed_form_gap": gap if rlhf_row else ""})
        if progress is not None:
            progress(k, {name: values.mean().item() for name, values in results.items()})
    return rows


def mean_curves(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    curves: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        curves.setdefault(row["objective"], {}).setdefault(row["n"], []).append(row["forward_kl"])
    return {name: (sorted(by_n), [sum(by_n[n]) / len(by_n[n]) for n in sorted(by_n)]) for name, by_n in curves.items()}


def fitted_slope(ns: list[int], values: list[float], fit_from: int) -> float:
    """Least-squares slope of log KL against log n over n >= fit_from (NaN with fewer than 2 usable points)."""
    points = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if n >= fit_from and v > 1e-9]
    if len(points) < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def degeneracy(seed: int = 0, trials: int = 8, n: int = 256, beta: float = 0.1) -> dict[str, dict[str, float]]:
    """The named setting ``half-support``: mu covers only responses 0-4 of each prompt, n pairs, no ridge.

    DPO (beta) and PMLE with its explicit KL (the same beta, exact KL(pi || pi_0)) are trained to convergence on
    the same pairs. Returns, per method, the quantities the callbacks log: mean entropy of pi(x), probability
    mass on the responses mu never produces, KL(pi || pi_0) and the forward KL to pi*.
    """
    oracle = TabularOracle.toy(trials=trials, seed=seed)
    support = torch.zeros(oracle.target_logits.shape[-1], dtype=torch.bool)
    support[: support.numel() // 2] = True
    oracle.sampler_logits = torch.where(support, 0.0, -1e9).expand_as(oracle.target_logits).to(torch.float64)
    pairs = oracle.sample_pairs(n, torch.Generator().manual_seed(seed + 1))
    fitted = {"reference": oracle.reference_logits, "dpo": fit_dpo(oracle, pairs, beta=beta, ridge=0.0),
              "pmle_kl": fit_pmle(oracle, pairs, ridge=0.0, beta=beta)}
    out = {}
    for name, logits in fitted.items():
        probs = logits.softmax(-1)
        out[name] = {"entropy": entropy(logits).mean().item(),
                     "mass_off_support": probs[..., ~support].sum(-1).mean().item(),
                     "kl_to_reference": kl(logits, oracle.reference_logits).mean().item(),
                     "forward_kl": oracle.forward_kl(logits).mean().item(),
                     "max_probability": probs.max(-1).values.mean().item()}
    return out


#: marker, line style and width of each objective: every line stays visible where two coincide (PMLE and DPO
#: agree up to n ≈ 2^11), and PMLE, the headline, is drawn last, on top
STYLES = {
    "pmle": ("o", "-", 2.2), "distill_learned": ("s", "--", 1.4), "distill_oracle": ("v", ":", 1.4),
    "reverse_kl": ("^", "-.", 1.4), "dpo": ("D", (0, (5, 2, 1, 2)), 1.4), "rlhf_tuned": ("x", (0, (1, 1)), 1.4),
}
DRAW_ORDER = [name for name in OBJECTIVES if name != "pmle"] + ["pmle"]


def plot(curves, slopes, rows, fit_from: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for z, name in enumerate(DRAW_ORDER):
        ns, values = curves[name]
        keep = [(n, v) for n, v in zip(ns, values) if v > 1e-9]
        marker, style, width = STYLES[name]
        left.plot(*zip(*keep), marker=marker, ls=style, lw=width, ms=5, mfc="none" if name != "pmle" else None,
                  zorder=2 + z, label=f"{LABELS[name]}: slope {slopes[name]:+.2f}")
    handles, labels = left.get_legend_handles_labels()
    order = [DRAW_ORDER.index(name) for name in OBJECTIVES]  # legend in the table's order, PMLE first
    left.set(xscale="log", yscale="log", xlabel="pairs n", ylabel="E_x KL(pi* || pi_hat)",
             title=f"Tabular oracle (10 x 10, gamma 0.5); slopes fitted on n >= {fit_from}")
    left.axvline(fit_from, color="grey", lw=0.5, ls=":")
    left.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)
    for name in ("reverse_kl", "rlhf_tuned"):
        ns, values = curves[name]
        marker, style, width = STYLES[name]
        right.plot(ns, values, marker=marker, ls=style, lw=width, ms=5, mfc="none", label=LABELS[name])
    betas = {row["n"]: row["beta"] for row in rows if row["objective"] == "rlhf_tuned"}
    for n, value in zip(*curves["rlhf_tuned"]):
        right.annotate(f"{float(betas[n]):g}", (n, value), fontsize=6, textcoords="offset points", xytext=(0, 5))
    right.set(xscale="log", yscale="log", xlabel="pairs n",
              title="Paper Fig. 1: RLHF (best beta per n, annotated) vs reverse KL")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_rows(path: str) -> list[dict]:
    """The rows of a ``convergence.csv`` written by this script, with their numeric types back."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["n"], row["trial"], row["forward_kl"] = int(row["n"]), int(row["trial"]), float(row["forward_kl"])
    return rows


def replot(path: str, fit_from: int, out: str) -> dict[str, float]:
    """Redraw ``<out>/convergence.png`` from a saved CSV (no fitting); returns the slopes it shows."""
    rows = read_rows(path)
    curves = mean_curves(rows)
    slopes = {name: fitted_slope(*curves[name], fit_from) for name in OBJECTIVES}
    plot(curves, slopes, rows, fit_from, os.path.join(out, "convergence.png"))
    return slopes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 2^5..2^12, 4 trials: a smoke test of the machinery, too small to show a rate "
                        "(the asymptotic regime starts near n = 2^16)")
    parser.add_argument("--min-exp", type=int, default=5)
    parser.add_argument("--max-exp", type=int, default=None, help="largest n is 2^max_exp (default 18, quick 12)")
    parser.add_argument("--trials", type=int, default=None, help="independent oracles and data sets (default 16)")
    parser.add_argument("--ridge", type=float, default=1.0, help="Gaussian prior on the logits (see tabular_fit.py)")
    parser.add_argument("--fit-from", type=int, default=None, help="fit slopes on n >= this (default 2^12, quick 2^9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs", help="output directory")
    parser.add_argument("--degeneracy", action="store_true", help="run only the degeneracy setting")
    parser.add_argument("--replot", metavar="CSV", help="only redraw <out>/convergence.png from a convergence.csv")
    args = parser.parse_args(argv)
    if args.replot:
        fit_from = args.fit_from if args.fit_from is not None else 2**12
        slopes = replot(args.replot, fit_from, args.out)
        print("slopes " + ", ".join(f"{name} {slope:+.3f}" for name, slope in slopes.items()))
        return {"slopes": slopes}
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    os.makedirs(args.out, exist_ok=True)
    summary = {"degeneracy": degeneracy(args.seed)}
    for name, values in summary["degeneracy"].items():
        print(f"degeneracy half-support {name:10s} " + " ".join(f"{k}={v:.4f}" for k, v in values.items()))
    if args.degeneracy:
        return summary
    max_exp = args.max_exp if args.max_exp is not None else (12 if args.quick else 18)
    trials = args.trials if args.trials is not None else (4 if args.quick else 16)
    fit_from = args.fit_from if args.fit_from is not None else 2 ** (9 if args.quick else 12)
    exponents = list(range(args.min_exp, max_exp + 1))
    from tqdm import tqdm

    bar = tqdm(total=len(exponents), desc="convergence sweep", unit="n")
    start = time.time()

    def progress(k: int, means: dict[str, float]) -> None:
        bar.set_postfix(n=2**k, pmle=f"{means['pmle']:.2e}", rlhf=f"{means['rlhf_tuned']:.2e}")
        bar.update()

    rows = run_sweep(exponents, trials, args.ridge, args.seed, progress)
    bar.close()
    curves = mean_curves(rows)
    slopes = {name: fitted_slope(*curves[name], fit_from) for name in OBJECTIVES}
    with open(os.path.join(args.out, "convergence.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, "convergence_slopes.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["objective", "slope", "fit_from", *[f"kl_n{n}" for n in curves["pmle"][0]]])
        for name in OBJECTIVES:
            writer.writerow([name, f"{slopes[name]:.3f}", fit_from, *[f"{v:.3e}" for v in curves[name][1]]])
    plot(curves, slopes, rows, fit_from, os.path.join(args.out, "convergence.png"))
    for name in OBJECTIVES:
        print(f"{LABELS[name]:32s} slope {slopes[name]:+.3f}  KL at n=2^{exponents[-1]}: {curves[name][1][-1]:.3e}")
    print(f"done in {time.time() - start:.0f} s; wrote convergence.csv, convergence_slopes.csv, convergence.png "
          f"to {args.out}")
    summary.update(slopes=slopes, curves=curves)
    return summary


if __name__ == "__main__":
    main()
