"""Convergence through the Lightning objectives on the language-model oracle: forward KL to pi* against n.

    OMP_NUM_THREADS=1 python benchmarks/convergence_lm.py     # n = 2^6, 2^8, ..., 2^14, 3 trials; writes docs/
    OMP_NUM_THREADS=1 python benchmarks/convergence_lm.py --max-exp 16   # up to 2^16: the run in docs/convergence.md
    OMP_NUM_THREADS=1 python benchmarks/convergence_lm.py --max-exp 8 --trials 1 --out /tmp/lm   # a short trial
    python benchmarks/convergence_lm.py --replot docs/convergence_lm.csv     # redraw from a (partial) CSV

Where ``benchmarks/convergence.py`` solves the losses on tables of logits, this study trains the embedded tiny
LM with the objectives a user runs (``lit_align.objectives.PMLE``, ``PreferenceDistillation``, ``ReverseKL``,
``DPO``) through a ``lightning.Trainer`` on CPU, on pairs of ``lit_align.data.OracleDataModule``, and measures
the exact forward KL E_x KL(pi* || pi_hat) with ``lit_align.oracle_lm.exact_sequence_kl`` (what
``OracleMonitor`` logs as ``oracle/forward_kl``) after each fit.

Setting ``lm-oracle-1tok`` (every value below is a command-line option of the same name):

- Task: ``num_prompts`` = 2 prompts of ``prompt_length`` = 2 tokens (BOS and one random token: the prompt
  only has to tell the two distributions apart, and short rows keep the fits cheap); one-token responses over
  the whole vocabulary of 474 tokens, so the KL is an exact sum; pi_0 = the tiny model with seed 0 (the
  policy's start), pi* = the tiny model with seed 1 and its output logits scaled by ``target_logit_scale`` = 8
  (KL(pi* || pi_0) ≈ 1.08 nats: far from pi_0); pairs a, b ~ pi_0, labelled with ``gamma`` = 4. A large gamma
  makes each comparison informative (the bound is C_Pi / (gamma^2 n)); what limits the rate is the number of
  pairs per unknown: 2 x 473 log-probabilities are estimated from n comparisons.
- Trials: the data seed (prompts, responses, labels) and the training seeds vary; pi_0 and pi* do not.
- PMLE (beta = 0, the setting of the theory) and DPO (beta = gamma) train on the n pairs with AdamW at ``lr`` =
  1e-2 (linear decay), batch min(n, ``batch_size`` = 256), max(``min_steps`` = 32, ``epochs`` = 2 x n / batch)
  steps.
- Preference distillation (beta = 0, on-policy pairs) and reverse KL (PPO, kl_coef = 0, entropy_coef = gamma)
  score their samples with a Bradley-Terry reward model learned from the same n pairs by lit-align's
  ``RewardModeling`` objective (a tiny backbone, the same step rule; one reward model serves both) and train for
  ``onpolicy_steps`` = 128 optimizer steps on batches of ``onpolicy_batch`` = 64 prompts (two samples each).
  Both have the optimum pi ∝ exp(R_hat / gamma).
- Reference lines: pi_0 itself, and distillation and reverse KL with the oracle reward R* = gamma ln pi*. These
  have no statistical error: what is left is the optimisation error of the on-policy fit (fitted once per trial,
  since R* does not depend on n).

Writes ``<out>/convergence_lm.csv`` (one row per n, objective and trial, with the seconds of each fit; those of
distillation include fitting the reward model it shares with reverse KL),
``<out>/convergence_lm.png`` (log-log, slopes fitted on n >= ``--fit-from`` in the legend) and
``<out>/convergence_lm_slopes.csv``; while running, every measured row is appended to
``<out>/convergence_lm.partial.csv``, and a progress line is printed per fit.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from convergence import fitted_slope  # noqa: E402

OBJECTIVES = ["pmle", "distill", "reverse_kl", "dpo"]
REFERENCES = ["pi0", "distill_oracle", "reverse_kl_oracle"]
LABELS = {
    "pmle": "PMLE (beta = 0)", "distill": "distillation (learned reward)", "reverse_kl": "reverse KL (beta = 0)",
    "dpo": "DPO (beta = gamma)", "pi0": "pi_0 (no training)",
    "distill_oracle": "distillation, oracle reward (its optimisation error)",
    "reverse_kl_oracle": "reverse KL, oracle reward (its optimisation error)",
}
STYLES = {  # every line distinguishable in print: marker, line style, colour; PMLE drawn last (on top)
    "pmle": ("o", "-", "tab:blue"), "distill": ("s", "--", "tab:orange"), "reverse_kl": ("^", "-.", "tab:green"),
    "dpo": ("D", ":", "tab:red"), "pi0": ("", "-", "grey"), "distill_oracle": ("", "--", "tab:orange"),
    "reverse_kl_oracle": ("", "-.", "tab:green"),
}


@dataclass
class Setting:
    """The task and training budget (see the module docstring)."""

    num_prompts: int = 2
    prompt_length: int = 2
    gamma: float = 4.0
    target_logit_scale: float = 8.0
    response_length: int = 1
    batch_size: int = 256
    lr: float = 1e-2
    epochs: float = 2.0
    min_steps: int = 32
    onpolicy_steps: int = 128
    onpolicy_batch: int = 64

    def data(self, n: int, trial: int, prompts_only: bool = False, batch_size: int | None = None):
        from lit_align.data import OracleDataModule

        return OracleDataModule(
            num_pairs=n, val_pairs=0, gamma=self.gamma, num_prompts=self.num_prompts,
            prompt_length=self.prompt_length, response_length=self.response_length,
            target_logit_scale=self.target_logit_scale,
            data_seed=1000 + trial, seed=trial, prompts_only=prompts_only,
            batch_size=batch_size or min(n, self.batch_size), tokenizer="tiny")

    def offline_steps(self, n: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * n / min(n, self.batch_size)))

    def sampling(self):
        from lit_align.rollout import SamplingConfig

        length = self.response_length
        return SamplingConfig(max_new_tokens=length, min_new_tokens=length)


def trainer(steps: int, root: str):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)


def policy():
    from lit_align.policy import PolicyWithReference

    return PolicyWithReference(model="tiny", seed=0, reference="copy")  # pi_0 of the task: tiny, seed 0


@torch.no_grad()
def forward_kl(datamodule, logits) -> float:
    """E_x KL(pi* || pi) over the task's prompts, exact; ``logits`` is the policy's logits function."""
    from lit_align.oracle_lm import exact_sequence_kl, logits_fn

    task = datamodule.build_task()
    return exact_sequence_kl(logits_fn(task.target), logits, task.prompts, task.response_length).mean().item()


def fit(module, datamodule, steps: int, seed: int, root: str) -> float:
    """Train ``module`` for ``steps`` optimizer steps, then return its exact forward KL to pi*."""
    import lightning as L

    L.seed_everything(seed, verbose=False)
    trainer(steps, root).fit(module, datamodule=datamodule)
    module.eval()
    return forward_kl(datamodule, lambda ids, mask: module.policy(ids, mask))


def fit_offline(name: str, setting: Setting, n: int, trial: int, root: str) -> float:
    """PMLE or DPO on the n pairs."""
    from lit_align.objectives import DPO, PMLE

    # share_prompt off: with 2-token prompts there is nothing to share, and packing costs more than the forward
    common = dict(policy=policy(), learning_rate=setting.lr, share_prompt=False)
    if name == "pmle":
        module = PMLE(gamma=setting.gamma, beta=0.0, **common)
    else:
        module = DPO(beta=setting.gamma, **common)
    return fit(module, setting.data(n, trial), setting.offline_steps(n), trial, root)


def fit_reward(setting: Setting, n: int, trial: int, root: str):
    """A Bradley-Terry reward model on the n pairs (lit-align's RewardModeling objective), frozen."""
    import lightning as L

    from lit_align.objectives import RewardModeling

    L.seed_everything(trial, verbose=False)
    module = RewardModeling(model="tiny", seed=100 + trial, learning_rate=setting.lr)
    trainer(setting.offline_steps(n), root).fit(module, datamodule=setting.data(n, trial))
    return module.scorer.eval().requires_grad_(False)


def fit_onpolicy(name: str, setting: Setting, reward, trial: int, root: str) -> float:
    """Distillation or reverse KL on the task's prompts against ``reward`` (a module scoring (ids, mask))."""
    from lit_align.objectives import PreferenceDistillation, ReverseKL

    common = dict(policy=policy(), reward_model=reward, sampling=setting.sampling(), learning_rate=setting.lr)
    if name.startswith("distill"):
        module = PreferenceDistillation(gamma=setting.gamma, beta=0.0, pairs="on_policy", epochs_per_batch=1,
                                        **common)
    else:
        # a one-token response never ends with EOS: keep the reward model's score (RLHF's default is -1 there)
        module = ReverseKL(entropy_coef=setting.gamma, kl_coef=0.0, epochs_per_batch=1, missing_eos_penalty=None,
                           **common)
    # the prompts are all on-policy objectives use: a data module of prompts only, batch onpolicy_batch
    data = setting.data(setting.onpolicy_batch, trial, prompts_only=True, batch_size=setting.onpolicy_batch)
    return fit(module, data, setting.onpolicy_steps, trial, root)


def pi0_kl(setting: Setting, trial: int) -> float:
    from lit_align.oracle_lm import logits_fn

    data = setting.data(1, trial)
    return forward_kl(data, logits_fn(data.build_task().reference))


FIELDS = ["n", "objective", "trial", "forward_kl", "seconds"]


def run_sweep(setting: Setting, exponents: list[int], trials: int, root: str, progress=print,
              objectives: list[str] = OBJECTIVES, partial_csv: str | None = None) -> list[dict]:
    """Forward KL of every objective at n = 2^k for each trial: one row per (n, objective, trial). Each row is
    also appended to ``partial_csv`` as soon as it is measured, so an interrupted run keeps what it did."""
    rows: list[dict] = []
    handle = open(partial_csv, "w", newline="") if partial_csv else None
    writer = csv.DictWriter(handle, fieldnames=FIELDS) if handle else None
    if writer:
        writer.writeheader()

    def record(row: dict) -> None:
        rows.append(row)
        if writer:
            writer.writerow(row)
            handle.flush()

    for trial in range(trials):
        base = {"pi0": pi0_kl(setting, trial)}
        progress(f"trial {trial}: pi_0 forward KL {base['pi0']:.4f}")
        for name in ("distill", "reverse_kl"):
            if name in objectives:  # the oracle reward R* = gamma ln pi* does not depend on n: fitted once
                started = time.time()
                base[f"{name}_oracle"] = fit_onpolicy(name, setting, setting.data(1, trial).reward(), trial, root)
                progress(f"trial {trial}: {name} with the oracle reward {base[f'{name}_oracle']:.4f} "
                         f"({time.time() - started:.0f} s)")
        for k in exponents:
            n = 2**k
            for name, value in base.items():
                record({"n": n, "objective": name, "trial": trial, "forward_kl": value, "seconds": 0.0})
            reward = None
            for name in objectives:
                started = time.time()
                if name in ("pmle", "dpo"):
                    value = fit_offline(name, setting, n, trial, root)
                else:
                    reward = reward if reward is not None else fit_reward(setting, n, trial, root)
                    value = fit_onpolicy(name, setting, reward, trial, root)
                seconds = time.time() - started  # the first reward-based fit of an n includes the reward model's
                record({"n": n, "objective": name, "trial": trial, "forward_kl": value, "seconds": seconds})
                progress(f"trial {trial} n=2^{k} {name:10s} forward KL {value:.4f} ({seconds:.0f} s)")
    if handle:
        handle.close()
    return rows


def mean_curves(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Objective -> (sorted n, mean forward KL over trials at each n)."""
    by_objective: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        by_objective.setdefault(row["objective"], {}).setdefault(row["n"], []).append(row["forward_kl"])
    return {name: (sorted(by_n), [sum(by_n[n]) / len(by_n[n]) for n in sorted(by_n)])
            for name, by_n in by_objective.items()}


def plot(curves, slopes, fit_from: int, setting: Setting, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in REFERENCES:
        if name in curves:
            marker, style, colour = STYLES[name]
            ax.plot(*curves[name], ls=style, color=colour, lw=1.2, label=LABELS[name])
    drawn = [name for name in OBJECTIVES if name in curves and name != "pmle"] + ["pmle"] * ("pmle" in curves)
    for z, name in enumerate(drawn):
        marker, style, colour = STYLES[name]
        ax.plot(*curves[name], marker=marker, ls=style, color=colour, lw=2.2 if name == "pmle" else 1.4, ms=6,
                mfc=None if name == "pmle" else "none", zorder=3 + z,
                label=f"{LABELS[name]}: slope {slopes[name]:+.2f}")
    ax.axvline(fit_from, color="grey", lw=0.5, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="pairs n", ylabel="E_x KL(pi* || pi_hat), exact",
           title=f"LM oracle through the Lightning objectives (tiny LM, {setting.num_prompts} prompts, "
                 f"1-token responses,\ngamma {setting.gamma:g}, target logit scale {setting.target_logit_scale:g}); "
                 f"slopes fitted on n >= {fit_from}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], setting: Setting, fit_from: int, out: str) -> dict[str, float]:
    """The CSV of every fit, the slopes CSV and the plot; returns the slopes."""
    curves = mean_curves(rows)
    slopes = {name: fitted_slope(*curves[name], fit_from) for name in OBJECTIVES if name in curves}
    with open(os.path.join(out, "convergence_lm.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    ns = curves[next(iter(curves))][0]
    with open(os.path.join(out, "convergence_lm_slopes.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["objective", "slope", "fit_from", *[f"kl_n{n}" for n in ns]])
        for name, (_, values) in curves.items():
            slope = f"{slopes[name]:.3f}" if name in slopes else ""
            writer.writerow([name, slope, fit_from, *[f"{v:.4e}" for v in values]])
    plot(curves, slopes, fit_from, setting, os.path.join(out, "convergence_lm.png"))
    return slopes


def main(argv: list[str] | None = None) -> dict:
    defaults = Setting()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-exp", type=int, default=6)
    parser.add_argument("--max-exp", type=int, default=14, help="largest n is 2^max_exp")
    parser.add_argument("--exp-step", type=int, default=2, help="n = 2^min_exp, 2^(min_exp + step), ...")
    parser.add_argument("--trials", type=int, default=3, help="data sets (prompts, pairs, labels) and training seeds")
    parser.add_argument("--fit-from", type=int, default=2**10, help="fit slopes on n >= this")
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    for field, value in vars(defaults).items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", default="docs", help="output directory")
    parser.add_argument("--replot", metavar="CSV", help="only rewrite the outputs from a (partial) convergence_lm CSV")
    args = parser.parse_args(argv)
    setting = Setting(**{field: getattr(args, field) for field in vars(defaults)})
    if args.replot:
        with open(args.replot, newline="") as handle:
            rows = [{"n": int(r["n"]), "objective": r["objective"], "trial": int(r["trial"]),
                     "forward_kl": float(r["forward_kl"]), "seconds": float(r["seconds"])}
                    for r in csv.DictReader(handle)]
        os.makedirs(args.out, exist_ok=True)
        slopes = write_outputs(rows, setting, args.fit_from, args.out)
        print("slopes " + ", ".join(f"{name} {slope:+.3f}" for name, slope in slopes.items()))
        return {"rows": rows, "slopes": slopes, "curves": mean_curves(rows)}
    torch.set_num_threads(1)  # the benchmark is meant to run on one core of a shared machine
    # Lightning's per-fit lines and notices (eval-mode modules, few batches) are silenced for the sweep only: the
    # levels and filters come back afterwards, so an in-process caller (the smoke test) keeps its logging.
    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            return _sweep(args, setting)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _sweep(args, setting: Setting) -> dict:
    os.makedirs(args.out, exist_ok=True)
    exponents = list(range(args.min_exp, args.max_exp + 1, args.exp_step))
    started = time.time()

    def progress(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", flush=True)

    with tempfile.TemporaryDirectory() as root:
        rows = run_sweep(setting, exponents, args.trials, root, progress, args.objectives,
                         os.path.join(args.out, "convergence_lm.partial.csv"))
    slopes = write_outputs(rows, setting, args.fit_from, args.out)
    os.remove(os.path.join(args.out, "convergence_lm.partial.csv"))
    curves = mean_curves(rows)
    for name, (ns, values) in curves.items():
        slope = f"slope {slopes[name]:+.3f}" if name in slopes else "(reference)"
        print(f"{LABELS[name]:50s} {slope:14s} KL at n={ns[0]}: {values[0]:.4f}, at n={ns[-1]}: {values[-1]:.4f}")
    seconds = time.time() - started
    print(f"done in {seconds:.0f} s; wrote convergence_lm.csv, convergence_lm_slopes.csv, convergence_lm.png to "
          f"{args.out}")
    return {"rows": rows, "slopes": slopes, "curves": curves, "seconds": seconds}


if __name__ == "__main__":
    main()
