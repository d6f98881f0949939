"""DPO throughput of lit-align against TRL's DPOTrainer: same model, data, batch, lengths, precision and steps.

    pip install -e ".[bench]"
    python benchmarks/bench_dpo.py                       # default comparison + length/batch scaling
    python benchmarks/bench_dpo.py --quick               # default comparison only

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


def build_model(directory: Path, hidden: int, layers: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models import EMBEDDED_DIR, load_tokenizer

    config = AutoConfig.from_pretrained(EMBEDDED_DIR)
    config.update({"hidden_size": hidden, "intermediate_size": int(hidden * 8 / 3 // 16 * 16),
                   "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64,
                   "head_dim": 64, "max_position_embeddings": 4096})
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


def run_lit_align(args) -> dict:
    import lightning as L
    import torch

    from lit_align.data import PreferenceDataModule
    from lit_align.objectives import DPO
    from lit_align.policy import PolicyWithReference

    reference = "cache" if args.reference == "precomputed" else "copy"
    policy = PolicyWithReference(model=args.model, reference=reference, dtype=args.dtype)
    module = DPO(beta=0.1, policy=policy, learning_rate=1e-5, lr_schedule="constant", warmup_ratio=0.0,
                 reference_cache_dir=os.path.join(args.workdir, "refcache"))
    data = PreferenceDataModule(path=args.data, batch_size=args.batch_size, max_length=args.max_length,
                                max_prompt_length=args.max_length // 2, val_fraction=0.0, seed=0)
    timer = _StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=args.warmup + args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer], precision="bf16-true" if args.dtype == "bfloat16" else "32-true")
    trainer.fit(module, data)
    return timer.result()


class _StepTimer:
    """Wall time and real tokens of the timed steps (Lightning callback)."""

    def __new__(cls, warmup: int):
        import lightning as L
        import torch

        class Timer(L.Callback):
            def __init__(self) -> None:
                self.warmup, self.times, self.tokens = warmup, [], 0

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if batch_idx >= self.warmup:
                    self.times.append(time.perf_counter() - self.start)
                    self.tokens += int(batch["attention_mask"].sum())

            def result(self) -> dict:
                return _summary(self.times, self.tokens)

        return Timer()


def run_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    ref_model = None if args.reference == "precomputed" else AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = DPOConfig(
        output_dir=os.path.join(args.workdir, "trl"), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        beta=0.1, max_length=args.max_length, logging_steps=10**6, save_strategy="no", report_to=[],
        precompute_ref_log_probs=args.reference == "precomputed", use_cpu=not torch.cuda.is_available(),
        bf16=args.dtype == "bfloat16", dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times, self.tokens, self.step = [], 0, 0

        def on_step_begin(self, targs, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if self.step >= args.warmup:
                self.times.append(time.perf_counter() - self.start)
            self.step += 1

    timer = Timer()
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    # TRL counts the real tokens of every step in _total_train_tokens; the timed share is the same per step
    # on average, so scale by the fraction of steps timed.
    total = trainer._total_train_tokens
    return _summary(timer.times, total * len(timer.times) / max(1, timer.step))


def _summary(times: list[float], tokens: float) -> dict:
    total = sum(times)
    return {"step_time": total / len(times), "tokens_per_sec": tokens / total, "peak_memory_mb": peak_memory_mb(),
            "steps": len(times)}


# -- driver ------------------------------------------------------------------------------------------------------


def measure(framework: str, args, reference: str, batch_size: int, seq_len: int) -> dict:
    data = Path(args.workdir) / f"pairs_{seq_len}.jsonl"
    if not data.exists():
        build_data(data, rows=max(256, batch_size * (args.warmup + args.steps + 2)), seq_len=seq_len)
    cmd = [sys.executable, __file__, "--worker", framework, "--reference", reference, "--batch-size", str(batch_size),
           "--max-length", str(2 * seq_len), "--data", str(data), "--model", args.model, "--workdir", args.workdir,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype", args.dtype,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["lit", "trl"])
    parser.add_argument("--reference", default="live", choices=["live", "precomputed"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="prompt + one response, in tokens (about)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--quick", action="store_true", help="skip the length and batch-size scaling")
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
        build_model(Path(args.model), args.hidden, args.layers)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
        print(f"# DPO: lit-align vs TRL ({device}; Llama hidden {args.hidden}, {args.layers} layers, {args.dtype}; "
              f"{args.warmup} warm-up + {args.steps} timed steps)\n")
        print("| reference | batch | tokens/seq | lit-align step (s) | TRL step (s) | lit-align tok/s | TRL tok/s "
              "| speed-up | lit-align peak MB | TRL peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = [(r, args.batch_size, args.seq_len) for r in ("live", "precomputed")]
        if not args.quick:
            rows += [("live", args.batch_size, n) for n in (args.seq_len // 2, args.seq_len * 2)]
            rows += [("live", b, args.seq_len) for b in (args.batch_size // 2, args.batch_size * 2)]
        for reference, batch, seq in rows:
            lit = measure("lit", args, reference, batch, seq)
            trl = measure("trl", args, reference, batch, seq)
            print(f"| {reference} | {batch} | {seq} | {lit['step_time']:.3f} | {trl['step_time']:.3f} | "
                  f"{lit['tokens_per_sec']:.0f} | {trl['tokens_per_sec']:.0f} | "
                  f"{lit['tokens_per_sec'] / trl['tokens_per_sec']:.2f}x | {lit['peak_memory_mb']:.0f} | "
                  f"{trl['peak_memory_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
