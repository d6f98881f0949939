"""Launching ``lit-align`` as a separate process (two ranks under the fsdp2 overlay) so that a hang fails a test.

``subprocess.run(..., timeout=...)`` kills only the process it started; the second rank Lightning spawns would
be left waiting in a collective forever. Here the run gets its own process group, and a timeout kills the group.
"""

from __future__ import annotations

import csv
import glob
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
# Two CPU processes (gloo) in float32, so that their numbers are comparable with one process's.
FSDP2 = ["--config", os.path.join(CONFIGS, "strategy", "fsdp2.yaml"), "--trainer.devices=2",
         "--trainer.strategy.init_args.mixed_precision=null"]


def launch(args: list[str], timeout: float = 240) -> str:
    """Run ``python -m lit_align.cli *args``; fail with its output if it fails or is still running at ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "lit_align.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank: they share the new session's process group
        output, _ = proc.communicate()
        pytest.fail(f"lit-align {args[0]} still running after {timeout:g} s (deadlock?):\n{output[-5000:]}")
    assert proc.returncode == 0, output[-8000:]
    return output


def metrics_by_run(root: str, name: str) -> list[dict[int, float]]:
    """One {step: value} of metric ``name`` per run (logger version) under ``root``, in run order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "logs", "version_*", "metrics.csv"))):
        with open(path) as f:
            runs.append({int(row["step"]): float(row[name]) for row in csv.DictReader(f) if row.get(name)})
    return runs
