"""Convergence through the Lightning objectives on a language-model oracle: forward KL to pi* against n.

    OMP_NUM_THREADS=1 python benchmarks/convergence_lm.py --out runs/convergence_lm   # the run in docs/convergence.md
    OMP_NUM_THREADS=1 python benchmarks/convergence_lm.py --max-exp 10 --trials 1 --out /tmp/lm   # a short trial
    python benchmarks/convergence_lm.py --replot docs/convergence_lm.csv       # redraw from a (partial) CSV

Where ``benchmarks/convergence.py`` solves the losses on tables of logits, this study trains small causal LMs
with the objectives a user runs (``lit_align.objectives.PMLE``, ``DPO``, ``RewardModeling``,
``PreferenceDistillation``, ``ReverseKL``, ``RLHF``) through a ``lightning.Trainer`` on CPU, on pairs of
``lit_align.data.OracleDataModule``, and measures the exact forward KL E_x KL(pi* || pi_hat)
(``lit_align.models.oracle.exact_sequence_kl``, what ``OracleMonitor`` logs) after each fit.

Setting ``lm-oracle-8tok`` (every value below is a command-line option of the same name):

- Models: the embedded tiny Llama architecture with its vocabulary cut to ``vocab_size`` = 8 tokens,
  ``hidden_size`` = 16 and ``num_layers`` = 1 (``lit_align.models.oracle.save_tiny_lm``): pi_0 = seed 0 with its
  output logits scaled by ``reference_logit_scale`` = 8 (the policy's start, peaked enough that DPO's and RLHF's
  optima differ from pi*), pi* = seed 1 scaled by ``target_logit_scale`` = 8 (same architecture: the policy can
  represent it exactly).
- Task: ``num_prompts`` = 2 prompts of ``prompt_length`` = 3 tokens, one-token responses over the 8 tokens, so
  each prompt has 7 free log-probabilities (14 in all) and the KL is an exact sum; pairs a, b ~ pi_0, labelled
  with ``gamma`` = 1. Trials vary the data seed (prompts, pairs, labels) and the training seeds.
- Offline fits (PMLE with beta = 0, DPO with beta = ``beta`` = gamma, the Bradley-Terry reward model of
  ``RewardModeling`` on the same pairs, from pi_0's backbone): full batch, ``torch.optim.LBFGS`` (strong Wolfe
  line search, ``lbfgs_iter`` iterations per optimizer step) through Lightning's closure.
- On-policy fits against the learned reward model (one serves all three): preference distillation (beta = 0,
  on-policy pairs), reverse KL (PPO, kl_coef = 0, entropy_coef = gamma) and RLHF (PPO, kl_coef = beta), with
  256 sampled responses per step (distillation: ``onpolicy_batch`` = 128 prompt rows, 2 samples each; PPO: 256
  rows, one sample each), one update per batch, AdamW at a constant ``onpolicy_lr`` = 1e-2 and the PPO rewards
  and advantages not whitened (whitening rescales a vanishing signal to unit size, so the iterates would never
  settle). At their optima distillation's and PPO's per-sample gradients vanish (gamma * delta ln pi = delta
  R_hat for every pair; the regularised reward is constant over responses), so sampled batches reach them
  without a noise floor.
- Stopping: every fit stops when it has converged — the largest change of any ln pi(a|x) over the whole
  support (both prompts, all 8 tokens; for the reward model, of ln softmax(R_hat / gamma)) during the last
  ``patience`` = 2 optimizer steps is below ``tol`` = 3e-4 — or at ``max_offline_steps`` = 50 (L-BFGS) or
  ``max_steps`` = 400 (on-policy) steps (the CSV's ``converged`` column says which; the reward model's is printed).
- Reference lines: pi_0 itself; DPO's and RLHF's population optimum pi ∝ pi_0 * pi*^(gamma/beta) (exact, per
  trial: the level they tend to); distillation and reverse KL given the oracle reward R* = gamma ln pi* (no
  statistical error: what is left is their optimisation error; fitted once per trial).

Writes ``<out>/convergence_lm.csv`` (one row per n, objective and trial, with each fit's seconds and steps),
``<out>/convergence_lm_slopes.csv`` (slope of each trial's curve on n >= ``--fit-from``, their mean and standard
error, and the mean KL per n) and ``<out>/convergence_lm.png``; every row is also appended to
``<out>/convergence_lm.partial.csv`` while running.
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
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from convergence import fitted_slope  # noqa: E402

OFFLINE = ["pmle", "dpo"]
ONPOLICY = ["distill", "reverse_kl", "rlhf"]
OBJECTIVES = OFFLINE + ONPOLICY
REFERENCES = ["pi0", "closed_form", "distill_oracle", "reverse_kl_oracle"]
LABELS = {
    "pmle": "PMLE (beta = 0)", "distill": "distillation (learned reward)",
    "reverse_kl": "reverse KL (learned reward)", "dpo": "DPO (beta = gamma)",
    "rlhf": "RLHF (learned reward, beta = gamma)",
    "pi0": "pi_0 (no training)", "closed_form": "DPO's and RLHF's optimum pi_0 * pi*^(gamma/beta) (exact)",
    "distill_oracle": "distillation, oracle reward (optimisation error)",
    "reverse_kl_oracle": "reverse KL, oracle reward (optimisation error)",
}
STYLES = {  # marker, line style, colour
    "pmle": ("o", "-", "tab:blue"), "distill": ("s", "--", "tab:orange"), "reverse_kl": ("^", "-.", "tab:green"),
    "dpo": ("D", ":", "tab:red"), "rlhf": ("v", ":", "tab:purple"), "pi0": ("", "-", "grey"),
    "closed_form": ("", "--", "tab:red"), "distill_oracle": ("", "--", "tab:orange"),
    "reverse_kl_oracle": ("", "-.", "tab:green"),
}


@dataclass
class Setting:
    """The task and the fits (see the module docstring)."""

    vocab_size: int = 8
    hidden_size: int = 16
    num_layers: int = 1
    num_prompts: int = 2
    prompt_length: int = 3
    gamma: float = 1.0
    beta: float = 1.0
    reference_logit_scale: float = 8.0
    target_logit_scale: float = 8.0
    lbfgs_iter: int = 20
    onpolicy_batch: int = 128
    onpolicy_lr: float = 1e-2
    tol: float = 3e-4
    patience: int = 2
    max_steps: int = 400
    max_offline_steps: int = 50
    models: dict = field(default_factory=dict)

    def prepare(self, root: str) -> None:
        """Write pi_0 and pi* as local model directories under ``root`` (once)."""
        from lit_align.models.oracle import save_tiny_lm

        if not self.models:
            size = dict(hidden_size=self.hidden_size, intermediate_size=2 * self.hidden_size, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=self.hidden_size // 2, num_hidden_layers=self.num_layers)
            self.models = {
                "reference": save_tiny_lm(os.path.join(root, "pi0"), 0, self.vocab_size, self.reference_logit_scale,
                                          **size),
                "target": save_tiny_lm(os.path.join(root, "target"), 1, self.vocab_size, self.target_logit_scale,
                                       **size)}

    def data(self, n: int, trial: int, prompts_only: bool = False, batch_size: int | None = None):
        from lit_align.data import OracleDataModule

        return OracleDataModule(
            num_pairs=n, val_pairs=0, gamma=self.gamma, num_prompts=self.num_prompts,
            prompt_length=self.prompt_length, response_length=1, reference_model=self.models["reference"],
            target_model=self.models["target"], target_logit_scale=1.0, data_seed=1000 + trial, seed=trial,
            prompts_only=prompts_only, batch_size=batch_size or n, tokenizer=self.models["reference"])

    def policy(self):
        from lit_align.policy.with_reference import PolicyWithReference

        return PolicyWithReference(model=self.models["reference"], reference="copy")


class Converged:
    """Stops a fit once no ln pi(a|x) of the support moved more than ``tol`` over ``patience`` optimizer steps."""

    def __init__(self, logprobs, tol: float, patience: int) -> None:
        import lightning as L

        outer = self

        class _Callback(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                outer.check(trainer)

        self.callback = _Callback()
        self.logprobs, self.tol, self.patience = logprobs, tol, patience
        self.history: list[torch.Tensor] = []
        self.converged = False

    def check(self, trainer) -> None:
        self.history = (self.history + [self.logprobs()])[-(self.patience + 1):]
        if len(self.history) > self.patience:
            moved = (torch.stack(self.history) - self.history[-1]).abs().max().item()
            if moved < self.tol:
                self.converged = True
                trainer.should_stop = True


@torch.no_grad()
def support_logprobs(logits, prompts: torch.Tensor) -> torch.Tensor:
    """ln pi(a|x) of every one-token response a after each prompt: (X, V), float32."""
    return logits(prompts, torch.ones_like(prompts))[:, -1].float().log_softmax(-1)


def forward_kl_of(target_logits, logits, prompts: torch.Tensor) -> float:
    """E_x KL(pi* || pi) over the prompts, exact (one-token responses)."""
    from lit_align.models.oracle import exact_sequence_kl

    return exact_sequence_kl(target_logits, logits, prompts, 1).mean().item()


def run_fit(module, datamodule, setting: Setting, seed: int, root: str, scorer=None, max_steps: int = 0) -> dict:
    """Train ``module`` until converged; the forward KL of its policy (or of the LM ``scorer`` implies)."""
    import lightning as L

    from lit_align.models.oracle import logits_fn

    task = datamodule.build_task()
    prompts = task.prompts
    if scorer is None:
        def logprobs():
            was = module.training
            module.eval()
            try:
                return support_logprobs(lambda ids, mask: module.policy(ids, mask), prompts)
            finally:
                module.train(was)
    else:
        logprobs = lambda: reward_logprobs(scorer(), prompts, setting)  # noqa: E731
    stop = Converged(logprobs, setting.tol, setting.patience)
    L.seed_everything(seed, verbose=False)
    started = time.time()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps or setting.max_steps, max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=[stop.callback])
    trainer.fit(module, datamodule=datamodule)
    module.eval()
    result = {"seconds": time.time() - started, "steps": trainer.global_step, "converged": stop.converged}
    if scorer is None:
        result["forward_kl"] = forward_kl_of(logits_fn(task.target), lambda ids, mask: module.policy(ids, mask),
                                             prompts)
    return result


@torch.no_grad()
def reward_logprobs(scorer, prompts: torch.Tensor, setting: Setting) -> torch.Tensor:
    """The LM a reward model implies, ln softmax(R(x, .) / gamma) over the support: (X, V)."""
    vocab = setting.vocab_size
    ids = torch.cat([prompts.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(prompts))[:, None]], 1)
    scores = scorer(ids, torch.ones_like(ids)).float().view(len(prompts), vocab)
    return (scores / setting.gamma).log_softmax(-1)


def lbfgs(params):
    return torch.optim.LBFGS(params, lr=1.0, max_iter=LBFGS_ITER[0], history_size=20, line_search_fn="strong_wolfe",
                             tolerance_grad=1e-9, tolerance_change=1e-12)


LBFGS_ITER = [20]  # set from the setting before each offline fit (a plain function is picklable for hparams)


def constant(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def fit_offline(name: str, setting: Setting, n: int, trial: int, root: str) -> dict:
    """PMLE or DPO on the n pairs, full batch, L-BFGS until converged."""
    from lit_align.objectives import DPO, PMLE

    LBFGS_ITER[0] = setting.lbfgs_iter
    common = dict(policy=setting.policy(), optimizer=lbfgs, lr_scheduler=constant, max_grad_norm=None,
                  share_prompt=False)
    module = PMLE(gamma=setting.gamma, beta=0.0, **common) if name == "pmle" else DPO(beta=setting.beta, **common)
    return run_fit(module, setting.data(n, trial), setting, trial, root, max_steps=setting.max_offline_steps)


def fit_reward(setting: Setting, n: int, trial: int, root: str):
    """The Bradley-Terry reward model of ``RewardModeling`` on the n pairs (from pi_0's backbone), frozen."""
    from lit_align.objectives import RewardModeling

    LBFGS_ITER[0] = setting.lbfgs_iter
    module = RewardModeling(model=setting.models["reference"], seed=100 + trial, optimizer=lbfgs,
                            lr_scheduler=constant, max_grad_norm=None)
    result = run_fit(module, setting.data(n, trial), setting, trial, root, scorer=lambda: module.scorer,
                     max_steps=setting.max_offline_steps)
    return module.scorer.eval().requires_grad_(False), result


def fit_onpolicy(name: str, setting: Setting, reward, trial: int, root: str) -> dict:
    """Distillation, reverse KL or RLHF on the task's prompts against ``reward`` (a module scoring (ids, mask))."""
    from lit_align.objectives import RLHF, PreferenceDistillation, ReverseKL
    from lit_align.generation.rollout import SamplingConfig

    # one token, EOS allowed (it is one of the 8 responses); the reward model's score is kept for every response
    common = dict(policy=setting.policy(), reward_model=reward, sampling=SamplingConfig(max_new_tokens=1),
                  learning_rate=setting.onpolicy_lr, lr_schedule="constant", warmup_ratio=0.0, epochs_per_batch=1)
    if name.startswith("distill"):
        module = PreferenceDistillation(gamma=setting.gamma, beta=0.0, pairs="on_policy", **common)
        rows = setting.onpolicy_batch
    else:
        ppo = dict(whiten_rewards=False, whiten_advantages=False, missing_eos_penalty=None, num_samples=1, **common)
        if name.startswith("reverse_kl"):
            module = ReverseKL(entropy_coef=setting.gamma, kl_coef=0.0, **ppo)
        else:
            module = RLHF(kl_coef=setting.beta, **ppo)
        rows = 2 * setting.onpolicy_batch  # as many samples as distillation's pairs
    data = setting.data(rows, trial, prompts_only=True, batch_size=rows)
    return run_fit(module, data, setting, trial, root)


@torch.no_grad()
def reference_levels(setting: Setting, trial: int) -> dict[str, float]:
    """pi_0's forward KL and that of DPO's/RLHF's population optimum pi ∝ pi_0 * pi*^(gamma/beta), exact."""
    from lit_align.models.oracle import logits_fn

    task = setting.data(1, trial).build_task()
    target = support_logprobs(logits_fn(task.target), task.prompts)
    reference = support_logprobs(logits_fn(task.reference), task.prompts)
    optimum = (reference + setting.gamma / setting.beta * target).log_softmax(-1)

    def kl(q):
        return (target.exp() * (target - q)).sum(-1).mean().item()

    return {"pi0": kl(reference), "closed_form": kl(optimum)}


FIELDS = ["n", "objective", "trial", "forward_kl", "seconds", "steps", "converged"]


def run_sweep(setting: Setting, exponents: list[int], trials: int, root: str, progress=print,
              objectives: list[str] = OBJECTIVES, partial_csv: str | None = None, oracle: bool = True) -> list[dict]:
    """Forward KL of every objective at n = 2^k for each trial: one row per (n, objective, trial)."""
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

    setting.prepare(root)
    for trial in range(trials):
        base = {name: {"forward_kl": v, "seconds": 0.0, "steps": 0, "converged": True}
                for name, v in reference_levels(setting, trial).items()}
        progress(f"trial {trial}: pi_0 {base['pi0']['forward_kl']:.4f}, "
                 f"closed-form optimum {base['closed_form']['forward_kl']:.4f}")
        for name in ("distill", "reverse_kl"):
            if oracle and name in objectives:  # the oracle reward does not depend on n: fitted once
                base[f"{name}_oracle"] = fit_onpolicy(name, setting, setting.data(1, trial).reward(), trial, root)
                progress(f"trial {trial}: {name} with the oracle reward {_describe(base[f'{name}_oracle'])}")
        for k in exponents:
            n = 2**k
            for name, result in base.items():
                record({"n": n, "objective": name, "trial": trial, **result})
            reward = None
            for name in objectives:
                if name in OFFLINE:
                    result = fit_offline(name, setting, n, trial, root)
                else:
                    if reward is None:
                        reward, fitted = fit_reward(setting, n, trial, root)
                        progress(f"trial {trial} n=2^{k} reward model  {_describe(fitted)}")
                    result = fit_onpolicy(name, setting, reward, trial, root)
                record({"n": n, "objective": name, "trial": trial, **result})
                progress(f"trial {trial} n=2^{k} {name:10s} {_describe(result)}")
    if handle:
        handle.close()
    return rows


def _describe(result: dict) -> str:
    kl = f"forward KL {result['forward_kl']:.5f} " if "forward_kl" in result else ""
    return (f"{kl}({result['steps']} steps, {'converged' if result['converged'] else 'NOT converged'}, "
            f"{result['seconds']:.0f} s)")


def curves(rows: list[dict]) -> dict[str, dict[int, dict[int, float]]]:
    """Objective -> trial -> n -> forward KL."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for row in rows:
        out.setdefault(row["objective"], {}).setdefault(row["trial"], {})[row["n"]] = row["forward_kl"]
    return out


def mean_curve(by_trial: dict[int, dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Sorted n, the mean over trials and its standard error at each n."""
    ns = sorted(set().union(*by_trial.values()))
    means, errors = [], []
    for n in ns:
        values = [t[n] for t in by_trial.values() if n in t]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        means.append(mean)
        errors.append(math.sqrt(var / len(values)))
    return ns, means, errors


def slope_stats(by_trial: dict[int, dict[int, float]], fit_from: int) -> tuple[float, float]:
    """Mean over trials of each trial's fitted slope (n >= fit_from), and its standard error."""
    slopes = [fitted_slope(sorted(t), [t[n] for n in sorted(t)], fit_from) for t in by_trial.values()]
    slopes = [s for s in slopes if math.isfinite(s)]
    if not slopes:
        return float("nan"), float("nan")
    mean = sum(slopes) / len(slopes)
    if len(slopes) < 2:
        return mean, float("nan")
    var = sum((s - mean) ** 2 for s in slopes) / (len(slopes) - 1)
    return mean, math.sqrt(var / len(slopes))


def plot(data, slopes, fit_from: int, setting: Setting, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 6))
    lowest = min(v for name in OBJECTIVES if name in data for v in mean_curve(data[name])[1] if v > 0)
    for name in REFERENCES:
        if name in data:
            ns, means, _ = mean_curve(data[name])
            label = LABELS[name]
            if name.endswith("_oracle"):  # far below the statistical errors: the level in the legend only
                label += f": {sum(means) / len(means):.1e}, below the axis"
            ax.plot(ns, means, ls=STYLES[name][1], color=STYLES[name][2], lw=1.2, label=label)
    for z, name in enumerate(n for n in ["dpo", "rlhf", "reverse_kl", "distill", "pmle"] if n in data):
        marker, style, colour = STYLES[name]
        ns, means, errors = mean_curve(data[name])
        for trial in data[name].values():  # the spread: every trial, faint
            ax.plot(sorted(trial), [trial[n] for n in sorted(trial)], ls="", marker=marker, ms=3, color=colour,
                    alpha=0.3)
        mean, se = slopes[name]
        ax.errorbar(ns, means, yerr=errors, marker=marker, ls=style, color=colour, lw=1.8, ms=6, capsize=3,
                    mfc="none", zorder=3 + z, label=f"{LABELS[name]}: slope {mean:+.2f} ± {se:.2f}")
    ns = sorted(set().union(*(set().union(*t.values()) for t in data.values())))
    if "pmle" in data:  # the 1/n guide through PMLE's mean at the first n of the fit
        pmle_ns, pmle_means, _ = mean_curve(data["pmle"])
        anchor = next((n, v) for n, v in zip(pmle_ns, pmle_means) if n >= fit_from)
        ax.plot(ns, [anchor[1] * anchor[0] / n for n in ns], color="black", lw=0.6, ls=(0, (1, 3)),
                label="1/n through PMLE")
    ax.axvline(fit_from, color="grey", lw=0.5, ls=":")
    ax.set_ylim(bottom=lowest / 3)
    ax.set(xscale="log", yscale="log", xlabel="pairs n", ylabel="E_x KL(pi* || pi_hat), exact",
           title=f"LM oracle through the Lightning objectives (tiny LM, {setting.vocab_size}-token vocabulary, "
                 f"{setting.num_prompts} prompts,\none-token responses, gamma {setting.gamma:g}, "
                 f"beta {setting.beta:g}); "
                 f"mean ± s.e. over trials, slopes (mean ± s.e. of per-trial fits) on n >= {fit_from}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], setting: Setting, fit_from: int, out: str) -> dict[str, tuple[float, float]]:
    """The CSV of every fit, the slopes CSV and the plot; returns objective -> (mean slope, standard error)."""
    data = curves(rows)
    slopes = {name: slope_stats(data[name], fit_from) for name in OBJECTIVES if name in data}
    with open(os.path.join(out, "convergence_lm.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    ns = mean_curve(next(iter(data.values())))[0]
    with open(os.path.join(out, "convergence_lm_slopes.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["objective", "slope", "slope_se", "fit_from", *[f"kl_n{n}" for n in ns]])
        for name, by_trial in data.items():
            mean, se = slopes.get(name, (None, None))
            writer.writerow([name, "" if mean is None else f"{mean:.3f}", "" if se is None else f"{se:.3f}",
                             fit_from, *[f"{v:.4e}" for v in mean_curve(by_trial)[1]]])
    plot(data, slopes, fit_from, setting, os.path.join(out, "convergence_lm.png"))
    return slopes


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"n": int(r["n"]), "objective": r["objective"], "trial": int(r["trial"]),
                 "forward_kl": float(r["forward_kl"]), "seconds": float(r["seconds"]), "steps": int(r["steps"]),
                 "converged": r["converged"] == "True"} for r in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> dict:
    defaults = Setting()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-exp", type=int, default=6)
    parser.add_argument("--max-exp", type=int, default=12, help="largest n is 2^max_exp")
    parser.add_argument("--exp-step", type=int, default=2, help="n = 2^min_exp, 2^(min_exp + step), ...")
    parser.add_argument("--trials", type=int, default=5, help="data sets (prompts, pairs, labels) and training seeds")
    parser.add_argument("--fit-from", type=int, default=2**8, help="fit slopes on n >= this")
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVES, choices=OBJECTIVES)
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle-reward reference fits")
    for name, value in vars(defaults).items():
        if name != "models":
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", default="docs", help="output directory")
    parser.add_argument("--replot", metavar="CSV", help="only rewrite the outputs from a (partial) convergence_lm CSV")
    args = parser.parse_args(argv)
    setting = Setting(**{name: getattr(args, name) for name in vars(defaults) if name != "models"})
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        rows = read_rows(args.replot)
        slopes = write_outputs(rows, setting, args.fit_from, args.out)
        print("slopes " + ", ".join(f"{name} {m:+.3f} ± {se:.3f}" for name, (m, se) in slopes.items()))
        return {"rows": rows, "slopes": slopes}
    torch.set_num_threads(1)  # the benchmark is meant to run on one core of a shared machine
    # Lightning's and transformers' per-fit lines are silenced for the sweep only (restored afterwards)
    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "lightning.fabric",
                                                     "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    progress_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", module="transformers")
            return _sweep(args, setting)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if progress_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)


def _sweep(args, setting: Setting) -> dict:
    exponents = list(range(args.min_exp, args.max_exp + 1, args.exp_step))
    started = time.time()

    def progress(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", flush=True)

    with tempfile.TemporaryDirectory() as root:
        rows = run_sweep(setting, exponents, args.trials, root, progress, args.objectives,
                         os.path.join(args.out, "convergence_lm.partial.csv"), oracle=not args.no_oracle)
    slopes = write_outputs(rows, setting, args.fit_from, args.out)
    os.remove(os.path.join(args.out, "convergence_lm.partial.csv"))
    data = curves(rows)
    for name, by_trial in data.items():
        ns, means, _ = mean_curve(by_trial)
        slope = f"slope {slopes[name][0]:+.3f} ± {slopes[name][1]:.3f}" if name in slopes else "(reference)"
        print(f"{LABELS[name]:58s} {slope:22s} KL at n={ns[0]}: {means[0]:.5f}, at n={ns[-1]}: {means[-1]:.5f}")
    seconds = time.time() - started
    print(f"done in {seconds:.0f} s; wrote convergence_lm.csv, convergence_lm_slopes.csv, convergence_lm.png to "
          f"{args.out}")
    return {"rows": rows, "slopes": slopes, "seconds": seconds}


if __name__ == "__main__":
    main()
