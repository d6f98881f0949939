"""DPO throughput of lit-align against TRL's DPOTrainer: same model, data, batch, lengths, precision and steps.

    pip install -e ".[bench]"
    python benchmarks/bench_dpo.py                       # default comparison + length/batch scaling
    python benchmarks/bench_dpo.py --quick               # default comparison only
    python benchmarks/bench_dpo.py --checkpointing both  # gradient checkpointing on in both (TRL's default)
    python benchmarks/bench_dpo.py --rows live:4:128 live:8:128 live:16:128 --plot memory.png

Each measurement runs in a fresh process (peak memory is the process's peak RSS on CPU, max_memory_allocated on
CUDA) that trains ``--warmup`` steps untimed, then ``--steps`` timed optimizer steps. Both frameworks get the
same random-init Llama (saved once to a temporary directory), the same jsonl of pairs, AdamW at the same rate,
float32 (bf16 on CUDA), and count the same real (non-padding) tokens per pair. Reference modes: ``live`` (a frozen
copy run every step) and ``precomputed`` (lit-align ``reference="cache"``, TRL ``precompute_ref_log_probs``),
whose one-off precomputation happens before the timed steps in both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

WORDS = ("calm careful bright quiet small warm kind open clear simple steady gentle honest useful patient "
         "curious").split()


def build_model(directory: Path, hidden: int, layers: int, vocab: int | None = None) -> None:
    """A random-init Llama of the embedded config's shape at ``hidden``/``layers``; ``vocab`` widens its embeddings
    and LM head (the tokenizer's 474 tokens use the first rows) to measure a modern vocabulary's logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models.loading import EMBEDDED_DIR, load_tokenizer

    config = AutoConfig.from_pretrained(EMBEDDED_DIR)
    config.update({"hidden_size": hidden, "intermediate_size": int(hidden * 8 / 3 // 16 * 16),
                   "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64,
                   "head_dim": 64, "max_position_embeddings": 4096} | ({"vocab_size": vocab} if vocab else {}))
    import torch

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)


def build_data(path: Path, rows: int, seq_len: int) -> None:
    """Pairs whose prompt and each response are about seq_len / 2 tokens (the tiny tokenizer: ~1 token per
    word)."""
    import random

    rng = random.Random(0)
    half = max(2, seq_len // 6)  # ~3 tokens per word

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": text(half), "chosen": text(half), "rejected": text(half)}) + "\n")


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers: one framework, one setting, one process ------------------------------------------------------------
#
# A step is timed from the end of the previous optimizer step to the end of this one, so it covers everything a
# user waits for: fetching and collating the batch, both forwards, backward, clipping, the optimizer, logging.
# Both frameworks clip gradients at norm 1 (TRL's default), log every 10 steps (TRL's default; lit-align's CSV
# logger as the CLI sets it up) and show no progress bar.

LOG_EVERY = 10


def run_lit_align(args) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from lit_align.data import PreferenceDataModule
    from lit_align.objectives import DPO
    from lit_align.policy.with_reference import PolicyWithReference

    rss_start = current_rss_mb()
    reference = "cache" if args.reference == "precomputed" else "copy"
    policy = PolicyWithReference(model=args.model, reference=reference, dtype=args.dtype,
                                 reference_cache_dir=tempfile.mkdtemp(dir=args.workdir),
                                 gradient_checkpointing=recomputes(args, "lit"))
    module = DPO(beta=0.1, policy=policy, learning_rate=1e-5, lr_schedule="constant", warmup_ratio=0.0,
                 share_prompt=not args.no_share_prompt)
    data = PreferenceDataModule(path=args.data, batch_size=args.batch_size, max_length=args.max_length,
                                max_prompt_length=args.max_length // 2, val_fraction=0.0, seed=0)
    precompute = []
    if reference == "cache":
        prepare = policy.reference.prepare

        def timed_prepare(*a, **kw):
            start = time.perf_counter()
            prepare(*a, **kw)
            precompute.append(time.perf_counter() - start)

        policy.reference.prepare = timed_prepare
    clock = StepClock()

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            clock.tick(int(batch["attention_mask"].sum()))

    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=args.warmup + args.steps,
                        logger=CSVLogger(args.workdir, name="lit"), log_every_n_steps=LOG_EVERY,
                        gradient_clip_val=1.0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Timer()],
                        precision="bf16-true" if args.dtype == "bfloat16" else "32-true")
    trainer.fit(module, data)
    return clock.summary(args.warmup, sum(precompute), rss_start)


def run_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rss_start = current_rss_mb()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    ref_model = None if args.reference == "precomputed" else AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = DPOConfig(
        output_dir=os.path.join(args.workdir, "trl"), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        beta=0.1, max_length=args.max_length, logging_steps=LOG_EVERY, max_grad_norm=1.0, save_strategy="no",
        report_to=[], precompute_ref_log_probs=args.reference == "precomputed",
        use_cpu=not torch.cuda.is_available(), bf16=args.dtype == "bfloat16", dataloader_num_workers=0, seed=0,
        disable_tqdm=True, gradient_checkpointing=recomputes(args, "trl"),
    )
    precompute = []
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        start = time.perf_counter()
        out = original(self, *a, **kw)
        precompute.append(time.perf_counter() - start)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    clock = StepClock()

    class Timer(TrainerCallback):
        seen = 0

        def on_step_end(self, targs, state, control, **kw):
            # TRL adds each batch's attention_mask sum (prompt + chosen and prompt + rejected) to this counter
            total = trainer._total_train_tokens
            clock.tick(total - self.seen)
            self.seen = total

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    return clock.summary(args.warmup, sum(precompute), rss_start)


def recomputes(args, framework: str) -> bool:
    """Gradient checkpointing for ``framework``: ``defaults`` gives each its own default (TRL on, lit-align off),
    ``both``/``none`` the same for both (the same work)."""
    return {"defaults": framework == "trl", "both": True, "none": False}[args.checkpointing]


class StepClock:
    """End times and real-token counts of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.tokens: list[int] = []

    def tick(self, tokens: int) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        self.tokens.append(tokens)

    def summary(self, warmup: int, precompute_s: float, rss_start_mb: float) -> dict:
        import statistics

        times = [b - a for a, b in zip(self.ends[warmup - 1 :], self.ends[warmup:])]  # steps warmup, warmup+1, ...
        tokens = self.tokens[warmup:]
        step = statistics.median(times)
        return {"step_time": step, "tokens_per_step": statistics.mean(tokens),
                "tokens_per_sec": statistics.mean(tokens) / step, "steps": len(times),
                "precompute_s": precompute_s, "peak_memory_mb": peak_memory_mb(),
                "start_memory_mb": rss_start_mb}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- driver ------------------------------------------------------------------------------------------------------


def measure(framework: str, args, reference: str, batch_size: int, seq_len: int) -> dict:
    """One measurement in a fresh process, so peak memory is this framework's alone."""
    data = Path(args.workdir) / f"pairs_{seq_len}.jsonl"
    if not data.exists():
        build_data(data, rows=max(256, batch_size * (args.warmup + args.steps + 2)), seq_len=seq_len)
    cmd = [sys.executable, __file__, "--worker", framework, "--reference", reference, "--batch-size", str(batch_size),
           "--max-length", str(2 * seq_len), "--data", str(data), "--model", args.model, "--workdir", args.workdir,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype", args.dtype,
           "--threads", str(args.threads), "--checkpointing", args.checkpointing] + (
        ["--no-share-prompt"] if args.no_share_prompt else [])
    # a fresh datasets cache, or TRL would reuse the reference log-probs an earlier process precomputed
    env = dict(os.environ, HF_DATASETS_CACHE=tempfile.mkdtemp(dir=args.workdir))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    import statistics

    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {
        "step_time_min": min(r["step_time"] for r in runs), "step_time_max": max(r["step_time"] for r in runs)}


def plot_memory(rows: list[dict], args) -> None:
    """Peak memory of both frameworks against batch size (rows at the default length) and sequence length (rows
    at the default batch), medians of the processes of each row, one panel each."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("batch", "seq", args.seq_len, "batch size (pairs)"), ("seq", "batch", args.batch_size,
                                                                       "tokens per sequence (prompt + response)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (x, fixed, value, label) in zip(axes, panels):
        chosen = sorted((r for r in rows if r[fixed] == value and r["reference"] == "live"), key=lambda r: r[x])
        for framework, name in (("lit", "lit-align"), ("trl", "TRL DPOTrainer")):
            ax.plot([r[x] for r in chosen], [statistics.median(m["peak_memory_mb"] for m in r[framework])
                                             for r in chosen], marker="o", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("peak memory (MB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"DPO peak memory, vocabulary {args.vocab or 474}, hidden {args.hidden}, checkpointing: "
                 f"{args.checkpointing}")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["lit", "trl"])
    parser.add_argument("--reference", default="live", choices=["live", "precomputed"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="prompt + one response, in tokens (about)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, help="embedding and LM-head rows (default: the tokenizer's 474); "
                        "131072 for a modern vocabulary")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="processes per framework and row (medians reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--quick", action="store_true", help="skip the length and batch-size scaling")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--no-share-prompt", action="store_true", help="lit-align without prompt sharing (ablation)")
    parser.add_argument("--rows", nargs="*", help="only these rows, as reference:batch:seq (e.g. live:8:64)")
    parser.add_argument("--checkpointing", default="defaults", choices=["defaults", "both", "none"],
                        help="gradient checkpointing: each framework's default (TRL on, lit-align off), or the same "
                        "for both")
    parser.add_argument("--plot", help="draw peak memory against batch size and sequence length of the rows here")
    parser.add_argument("--data")
    parser.add_argument("--model")
    parser.add_argument("--workdir")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.dtype is None:
        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if args.worker:
        result = (run_lit_align if args.worker == "lit" else run_trl)(args)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        args.model = os.path.join(workdir, "model")
        build_model(Path(args.model), args.hidden, args.layers, args.vocab)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
        print(f"# DPO: lit-align vs TRL ({device}; Llama hidden {args.hidden}, {args.layers} layers, vocabulary "
              f"{args.vocab or 474}, {args.dtype}; "
              f"{args.warmup} warm-up + {args.steps} timed steps; median of {args.repeats} processes each)\n")
        print("| reference | batch | tokens/seq | lit-align step s (min-max) | TRL step s (min-max) | lit-align tok/s "
              "| TRL tok/s | speed-up | lit-align peak MB | TRL peak MB | precompute s lit / TRL |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        rows = [(r, args.batch_size, args.seq_len) for r in ("live", "precomputed")]
        if not args.quick:
            rows += [("live", args.batch_size, n) for n in (args.seq_len // 2, args.seq_len * 2)]
            rows += [("live", b, args.seq_len) for b in (args.batch_size // 2, args.batch_size * 2)]
        if args.rows:
            rows = [(r, int(b), int(n)) for r, b, n in (row.split(":") for row in args.rows)]
        everything = []
        for reference, batch, seq in rows:
            runs = {"lit": [], "trl": []}
            for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
                for framework in runs:
                    runs[framework].append(measure(framework, args, reference, batch, seq))
            lit, trl = median_of(runs["lit"]), median_of(runs["trl"])
            everything.append({"reference": reference, "batch": batch, "seq": seq, **runs})
            precompute = (f"{lit['precompute_s']:.2f} / {trl['precompute_s']:.2f}" if reference == "precomputed"
                          else "-")
            print(f"| {reference} | {batch} | {seq} | {lit['step_time']:.3f} ({lit['step_time_min']:.3f}-"
                  f"{lit['step_time_max']:.3f}) | {trl['step_time']:.3f} ({trl['step_time_min']:.3f}-"
                  f"{trl['step_time_max']:.3f}) | {lit['tokens_per_sec']:.0f} | {trl['tokens_per_sec']:.0f} | "
                  f"{lit['tokens_per_sec'] / trl['tokens_per_sec']:.2f}x | {lit['peak_memory_mb']:.0f} | "
                  f"{trl['peak_memory_mb']:.0f} | {precompute} |", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(everything, indent=1))
        if args.plot:
            plot_memory(everything, args)


if __name__ == "__main__":
    main()
