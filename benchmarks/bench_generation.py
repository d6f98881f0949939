"""Step time of preference distillation with Hugging Face ``generate`` against the in-process vLLM engine.

    . .venv-vllm/bin/activate                    # the vLLM environment (see .ci/run, step 3)
    python benchmarks/bench_generation.py        # both backends, the tiny default, 8 timed batches each
    python benchmarks/bench_generation.py --max-new-tokens 64 --batch-size 32

Each backend runs ``configs/pdistill.yaml`` in a fresh process (same seed, data, sizes, CPU), through the CLI as a
user would, with ``--model.reward_model=tiny`` (no reward stage) and the monitors off. The policy is the embedded
tiny model with 2 heads of 32 instead of 4 of 16 (vLLM's CPU attention has no kernel for heads of 16), saved once
to a temporary directory; ``--model`` names another. One batch of prompts is one generation (two
samples per prompt) plus ``epochs_per_batch`` optimizer steps; the first ``--warmup`` batches are untimed (they
include vLLM's engine start). Reported: median wall time of a batch, and of its generation alone (the backend
call, weight push included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args: argparse.Namespace) -> dict:
    import lightning.pytorch as pl

    from lit_align.cli.app import build_cli

    batch_times: list[float] = []
    generation_times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.started = time.perf_counter()
            if batch_idx == 0:  # wrap the backend once the policy exists
                backend = module.policy.generation_backend

                def timed(*a, **k):
                    start = time.perf_counter()
                    try:
                        return backend(*a, **k)
                    finally:
                        generation_times.append(time.perf_counter() - start)

                module.policy.generation_backend = timed

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            batch_times.append(time.perf_counter() - self.started)

    batches = args.warmup + args.batches
    cli_args = [
        "fit", "--config", os.path.join(ROOT, "configs", "pdistill.yaml"), "--model.reward_model=tiny",
        f"--model.policy.init_args.model={args.model}",
        f"--model.policy.init_args.generation={args.backend}", f"--data.batch_size={args.batch_size}",
        f"--model.sampling.max_new_tokens={args.max_new_tokens}", f"--model.epochs_per_batch={args.epochs_per_batch}",
        f"--trainer.max_steps={batches * args.epochs_per_batch}", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={args.root}",
    ]
    if args.backend == "vllm":
        cli_args.append("--model.policy.init_args.vllm_options={cpu_kv_cache_gib: 1}")
    _run_with(cli_args, Timer())
    timed = slice(args.warmup, None)
    return {"backend": args.backend, "batches": len(batch_times[timed]),
            "batch_s": statistics.median(batch_times[timed]),
            "generation_s": statistics.median(generation_times[timed]),
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
            "epochs_per_batch": args.epochs_per_batch}


def _run_with(cli_args: list[str], callback) -> None:
    """The CLI's fit with the timer added to its Trainer."""
    from lit_align.cli.app import build_cli

    cli = build_cli(cli_args[1:], run=False)  # without the subcommand: parse and instantiate only
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def save_tiny_with_wider_heads(directory: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models.loading import EMBEDDED_DIR, load_tokenizer

    config = AutoConfig.from_pretrained(EMBEDDED_DIR)
    config.update({"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32})
    import torch

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["hf", "vllm"], help="measure one backend in this process")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--epochs-per-batch", type=int, default=4)
    parser.add_argument("--model", help="the policy (default: the tiny model with heads of 32)")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "bench_generation"))
    args = parser.parse_args()
    if args.backend:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    results = []
    with tempfile.TemporaryDirectory() as directory:
        model = args.model or directory
        if not args.model:
            save_tiny_with_wider_heads(directory)
        for backend in ("hf", "vllm"):
            command = [sys.executable, __file__, "--backend", backend, "--model", model, *sys.argv[1:]]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    print("| backend | batch of prompts (s) | generation (s) | batch size | max new tokens |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['batch_s']:.3f} | {r['generation_s']:.3f} | {r['batch_size']} | "
              f"{r['max_new_tokens']} |")


if __name__ == "__main__":
    main()
