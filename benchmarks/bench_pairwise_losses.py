"""Step time of every offline pairwise config (configs/offline, plus configs/dpo.yaml as the baseline).

    python benchmarks/bench_pairwise_losses.py                 # all configs, 20 steps each
    python benchmarks/bench_pairwise_losses.py --steps 10 simpo orpo

Each config is built through the CLI as ``lit-align fit --config ... --trainer.max_steps=N`` would build it
(callbacks, validation, checkpoints and export off, so only training steps are measured) and trained in this
process; a callback times each optimizer step (batch start to batch end), the first ``--warmup`` untimed. Prints
a Markdown table of the median and mean step time and the samples (pairs) per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402

from lit_align.cli.app import build_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def time_config(config: Path, steps: int, warmup: int, root: str) -> list[float]:
    cli = build_cli(["--config", str(config), f"--trainer.max_steps={steps + warmup}",
                     "--trainer.callbacks=[]", "--trainer.limit_val_batches=0", "--trainer.val_check_interval=null",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                     "--trainer.logger=false", "--export.enabled=false", "--checkpoint.every_n_train_steps=0",
                     "--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}"], run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="config stems of configs/offline (default: all)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--root", default="runs/bench_pairwise")
    args = parser.parse_args()
    configs = [ROOT / "configs/offline" / f"{n}.yaml" for n in args.names] or [
        ROOT / "configs/dpo.yaml", *sorted((ROOT / "configs/offline").glob("*.yaml"))]
    print("| config | objective | median step | mean step | pairs/s |")
    print("|---|---|---|---|---|")
    for config in configs:
        times = time_config(config, args.steps, args.warmup, args.root)
        median = statistics.median(times)
        name = config.relative_to(ROOT / "configs")
        objective = config.read_text().split("class_path: lit_align.objectives.")[1].split()[0]
        print(f"| {name} | {objective} | {median:.3f} s | {statistics.mean(times):.3f} s | {16 / median:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
