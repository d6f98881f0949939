"""Degeneracy on a language model: DPO drives the policy's entropy down, PMLE with its explicit KL does not.

    python benchmarks/degeneracy_lm.py               # 3 seeds x 2 objectives, writes docs/degeneracy_lm.md
    python benchmarks/degeneracy_lm.py --seeds 0 --steps 48 --out /tmp/deg   # one seed, shorter

It also draws the first seed's runs overlaid (``lit_align.runs.plot``: entropy, KL, diversity, length, loss, ...) into
``docs/degeneracy_lm/``.

Named setting ``tiny-high-lr``: the embedded tiny model and the shipped preference pairs (``path: tiny``), both
objectives trained through the real CLI (``lit_align.cli.app.build_cli``, the shipped ``configs/dpo.yaml`` and
``configs/pmle.yaml``) with the same learning rate, batch size and number of optimizer steps; DPO with a small
beta (its implicit KL barely holds the policy), PMLE with beta > 0 (its sampled KL term pulls towards pi_0).
The shipped monitors measure both runs on the same fixed probe prompts: ``EntropyMonitor`` (token entropy of
the policy's samples and along the data's completions), ``KLMonitor`` (exact per-token KL to the reference
summed along samples) and ``ModeCollapseMonitor`` (distinct-2, unique responses per prompt). The values are read
back from each run's ``metrics.csv``; the table compares the first measurement (step 0, before any update)
with the last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (metric in metrics.csv, column label)
METRICS = [
    ("monitor/entropy", "entropy (samples)"),
    ("monitor/entropy_data", "entropy (data)"),
    ("monitor/kl_token", "KL to pi_0"),
    ("collapse/distinct_2", "distinct-2"),
    ("collapse/unique_fraction", "unique fraction"),
    ("collapse/mean_length", "mean length"),
    ("train/rewards/accuracies", "train pair accuracy"),  # first logged step, not step 0: shows both learn
]
GENERATED_END = "<!-- end of the table written by benchmarks/degeneracy_lm.py -->"


def settings(dpo_beta: float, pmle_beta: float, control: bool) -> dict[str, tuple[str, list[str]]]:
    """Objective name -> (shipped config, objective-specific overrides). The control, PMLE without its KL
    term (beta = 0), tells how much of PMLE's stability the explicit KL provides."""
    runs = {
        f"DPO (beta={dpo_beta:g})": ("dpo.yaml", [f"--model.init_args.beta={dpo_beta}"]),
        f"PMLE (beta={pmle_beta:g})": ("pmle.yaml", [f"--model.init_args.beta={pmle_beta}"]),
    }
    if control:
        runs["PMLE (beta=0)"] = ("pmle.yaml", ["--model.init_args.beta=0.0"])
    return runs


def monitor_callbacks(every: int, prompts: int, samples: int, max_new_tokens: int) -> str:
    """The three monitors as a JSON list for ``--trainer.callbacks`` (replaces the config's list)."""
    probe = {"every_n_steps": every, "num_prompts": prompts, "num_samples": samples,
             "sampling": {"max_new_tokens": max_new_tokens}}
    names = ["EntropyMonitor", "KLMonitor", "ModeCollapseMonitor"]
    return json.dumps([{"class_path": f"lit_align.callbacks.{n}", "init_args": probe} for n in names])


def cli_args(config: str, overrides: list[str], root: str, seed: int, steps: int, learning_rate: float,
             callbacks: str) -> list[str]:
    return [
        "fit", "--config", os.path.join(ROOT, "configs", config), *overrides,
        # the seed sets the policy's random init (and so pi_0), the data order and all sampling
        f"--seed_everything={seed}", f"--model.init_args.policy.init_args.seed={seed}",
        f"--data.init_args.seed={seed}", f"--model.init_args.learning_rate={learning_rate}",
        f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", "--trainer.accelerator=cpu",
        "--trainer.devices=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={root}", f"--trainer.callbacks={callbacks}", "--export.enabled=false",
    ]


def read_monitors(metrics_csv: str) -> dict[str, tuple[float, float]]:
    """First and last logged value of each monitored metric: name -> (start, end)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for name, _ in METRICS:
                if row.get(name):
                    series.setdefault(name, []).append((int(row["step"]), float(row[name])))
    return {name: (min(s)[1], max(s)[1]) for name, s in series.items()}


def run_one(objective: str, config: str, overrides: list[str], out: str, seed: int, steps: int,
            learning_rate: float, callbacks: str) -> dict[str, tuple[float, float]]:
    """Train one objective through the CLI and return its monitors' (start, end) values."""
    from lit_align.cli.app import build_cli

    slug = "".join(c if c.isalnum() else "_" for c in objective.lower()).strip("_")
    root = os.path.join(out, f"{slug}_seed{seed}")
    cli = build_cli(cli_args(config, overrides, root, seed, steps, learning_rate, callbacks))
    return read_monitors(os.path.join(cli.trainer.log_dir, "metrics.csv"))


def fmt(start: float, end: float) -> str:
    return f"{start:.3f} -> {end:.3f}"


def markdown(results: dict[str, dict[int, dict]], args: argparse.Namespace, command: str, seconds: float) -> str:
    lines = [
        "## Degeneracy on a language model: DPO vs PMLE (`tiny-high-lr`)", "",
        f"Command (took {seconds:.0f} s on 2 CPU cores):", "", "```", command, "```", "",
        f"Both objectives: the embedded tiny model, the shipped `tiny` preference pairs, batch 16, learning rate "
        f"{args.learning_rate:g}, {args.steps} optimizer steps, reference `copy`. DPO beta = {args.dpo_beta:g}; "
        f"PMLE gamma = 0.1, beta = {args.pmle_beta:g} (sampled KL, 2 samples per prompt). The monitors measure "
        f"{args.prompts} validation prompts x {args.samples} samples of at most {args.max_new_tokens} tokens "
        f"at temperature 1, every {args.every} steps; each cell is start (step 0, before any update) -> end "
        f"(step {args.steps}), read from the run's `metrics.csv`.", "",
        "| objective | seed | " + " | ".join(label for _, label in METRICS) + " | entropy end/start |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for objective, by_seed in results.items():
        for seed, values in by_seed.items():
            cells = [fmt(*values[name]) if name in values else "n/a" for name, _ in METRICS]
            ratio = values["monitor/entropy"][1] / values["monitor/entropy"][0]
            lines.append(f"| {objective} | {seed} | " + " | ".join(cells) + f" | {ratio:.3f} |")
    lines += ["", "Entropy ratio end/start (mean over seeds): " + ", ".join(
        f"{objective} {statistics.mean(entropy_ratio(v) for v in by_seed.values()):.3f}"
        for objective, by_seed in results.items()) + "."]
    return "\n".join(lines) + "\n" + GENERATED_END + "\n"


def write_doc(path: str, table: str) -> None:
    """Replace the generated part of ``path`` and keep the hand-written text after ``GENERATED_END``."""
    kept = ""
    if os.path.exists(path):
        with open(path) as f:
            _, marker, kept = f.read().partition(GENERATED_END + "\n")
        kept = kept if marker else ""
    with open(path, "w") as f:
        f.write(table + kept)


def entropy_ratio(values: dict[str, tuple[float, float]]) -> float:
    start, end = values["monitor/entropy"]
    return end / start


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--dpo-beta", type=float, default=0.01)
    parser.add_argument("--pmle-beta", type=float, default=0.5)
    parser.add_argument("--every", type=int, default=24, help="monitor every this many steps")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--no-control", action="store_true", help="skip the PMLE beta = 0 control")
    parser.add_argument("--out", default="runs/degeneracy_lm", help="run folders")
    parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "degeneracy_lm.md"),
                        help="markdown table ('' to skip)")
    parser.add_argument("--figures", default=os.path.join(ROOT, "docs", "degeneracy_lm"),
                        help="folder for the curves of the first seed's runs, overlaid ('' to skip)")
    args = parser.parse_args(argv)

    callbacks = monitor_callbacks(args.every, args.prompts, args.samples, args.max_new_tokens)
    started = time.time()
    results: dict[str, dict[int, dict]] = {}
    for objective, (config, overrides) in settings(args.dpo_beta, args.pmle_beta, not args.no_control).items():
        for seed in args.seeds:
            results.setdefault(objective, {})[seed] = run_one(
                objective, config, overrides, args.out, seed, args.steps, args.learning_rate, callbacks)
    seconds = time.time() - started
    command = "python benchmarks/degeneracy_lm.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    table = markdown(results, args, command, seconds)
    print(table)
    if args.doc:
        write_doc(args.doc, table)
    if args.figures:  # the same figures as `lit-align plot <run> <run> ...`, one line style per objective
        from lit_align.runs.plot import plot_runs

        first = [os.path.join(args.out, name) for name in sorted(os.listdir(args.out)) if name.endswith(
            f"_seed{args.seeds[0]}")]
        written = plot_runs(first, args.figures)
        print(f"figures: {', '.join(str(p) for p in written)}")
    return results


if __name__ == "__main__":
    main()
