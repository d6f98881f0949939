"""Resident memory each import adds, for lit-align's and TRL's stacks: where a process's memory goes before any
model is loaded.

    python benchmarks/import_memory.py          # both stacks, each in a fresh process
    python benchmarks/import_memory.py --stack lit
    python benchmarks/import_memory.py --startup 5   # whole start-ups: medians of 5 fresh processes each

Each stack is imported in a fresh process, module by module, in the order given below; a row is the RSS added by
that import (what an earlier one already loaded is not counted again). ``matplotlib.pyplot`` is listed on its own
in lit-align's stack because torchmetrics (which Lightning imports) imports it whenever matplotlib is installed.
lit-align imports ``datasets`` only where it reads rows, so it is not in lit-align's stack.

``--startup N`` times whole start-ups instead, each in N fresh processes (medians, with the range): the imports a
run pays (lit-align's objectives and callbacks, the base ``lightning, transformers, torch``, TRL's DPO trainer),
timed inside the process, with the process's peak RSS; and ``lit-align fit --help``, timed from outside. The
start-ups alternate within each round.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

STACKS = {
    "lit": ["torch", "transformers", "transformers.modeling_utils", "matplotlib.pyplot", "torchmetrics",
            "lightning.pytorch", "peft", "jsonargparse", "lit_align.policy.with_reference", "lit_align.objectives",
            "lit_align.cli"],
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


#: What ``--startup`` times: a label and the Python statement of each start-up.
STARTUPS = {
    "import lightning, transformers, torch": "import lightning, transformers, torch",
    "import lit_align.objectives, lit_align.callbacks": "import lit_align.objectives, lit_align.callbacks",
    "from trl import DPOTrainer": "from trl import DPOTrainer",
}
TIMED = "import resource, time; t = time.perf_counter(); {}; " \
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def startups(runs: int) -> None:
    """Print the median wall time (s) and peak RSS (MiB) of each start-up over ``runs`` fresh processes."""
    import os
    import statistics
    import time

    print(f"load before: {os.getloadavg()[0]:.1f}\n")
    print("| start-up | s, median (min-max) | peak RSS MiB, median |\n|---|---|---|")
    command = [os.path.join(os.path.dirname(sys.executable), "lit-align"), "fit", "--help"]
    times: dict[str, list[float]] = {label: [] for label in [*STARTUPS, "`lit-align fit --help`"]}
    peaks: dict[str, list[float]] = {label: [] for label in STARTUPS}
    for _ in range(runs):  # the start-ups alternate, so a change in the machine's load hits all alike
        for label, statement in STARTUPS.items():
            out = subprocess.run([sys.executable, "-c", TIMED.format(statement)], capture_output=True, text=True,
                                 check=True)
            seconds, peak = map(float, out.stdout.split()[-2:])
            times[label].append(seconds)
            peaks[label].append(peak)
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times["`lit-align fit --help`"].append(time.perf_counter() - start)
    for label, seconds in times.items():
        peak = f"{statistics.median(peaks[label]):.0f}" if label in peaks else "- (whole process, timed outside)"
        print(f"| {label if label.startswith('`') else f'`{label}`'} | {statistics.median(seconds):.2f} "
              f"({min(seconds):.2f}-{max(seconds):.2f}) | {peak} |")
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=list(STACKS))
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--startup", type=int, metavar="N", help="time whole start-ups, N processes each")
    args = parser.parse_args()
    if args.startup:
        return startups(args.startup)
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
