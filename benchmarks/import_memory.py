"""Resident memory each import adds, for lit-align's and TRL's stacks: where a process's memory goes before any
model is loaded.

    python benchmarks/import_memory.py          # both stacks, each in a fresh process
    python benchmarks/import_memory.py --stack lit

Each stack is imported in a fresh process, module by module, in the order given below; a row is the RSS added by
that import (what an earlier one already loaded is not counted again). ``matplotlib.pyplot`` is listed on its own
in lit-align's stack because torchmetrics (which Lightning imports) imports it whenever matplotlib is installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

STACKS = {
    "lit": ["torch", "transformers", "transformers.modeling_utils", "datasets", "matplotlib.pyplot", "torchmetrics",
            "lightning.pytorch", "peft", "jsonargparse", "lit_align.policy.with_reference", "lit_align.objectives", "lit_align.cli"],
    "trl": ["torch", "transformers", "transformers.modeling_utils", "datasets", "accelerate", "trl",
            "trl.trainer.dpo_trainer"],
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def measure(stack: str) -> list[tuple[str, float, bool]]:
    """(module, MB added, whether it was already imported by an earlier one) for each module of ``stack``."""
    rows, before = [], rss_mb()
    for name in STACKS[stack]:
        loaded = name in sys.modules
        try:
            importlib.import_module(name)
        except ImportError:
            rows.append((name, float("nan"), False))
            continue
        now = rss_mb()
        rows.append((name, now - before, loaded))
        before = now
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=list(STACKS))
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"rows": measure(args.stack), "total": rss_mb()}))
        return
    for stack in [args.stack] if args.stack else list(STACKS):
        out = subprocess.run([sys.executable, __file__, "--worker", "--stack", stack], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n{stack}: {result['total']:.0f} MB after the imports\n\n| import | + MB |\n|---|---|")
        for name, added, loaded in result["rows"]:
            note = " (already imported)" if loaded else ""
            print(f"| {name}{note} | {added:.0f} |")


if __name__ == "__main__":
    main()
