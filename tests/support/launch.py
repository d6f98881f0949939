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
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def free_port() -> int:
    """A TCP port nothing listens on now, for a run's rendezvous (``MASTER_PORT``)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it. torchrun starts each worker in a session of its own, so killing the
    agent's process group would leave the worker running: a dead node is the whole tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(pid: int) -> None:
    for member in process_tree(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_node(command: list[str], **env: str) -> subprocess.Popen:
    """One simulated node: ``command`` (a ``torchrun`` agent or one SLURM task) in its own session, output piped."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": os.path.join(ROOT, "tests"), **env}
    return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish_nodes(nodes: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Every node's output once all have ended; a node still running at ``timeout`` has every node's processes
    killed and fails the test (a hang must not outlive it)."""
    outputs = [""] * len(nodes)

    def read(i: int) -> None:
        outputs[i] = nodes[i].stdout.read()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(nodes))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    for node in nodes:  # its output closed: the process itself may still be exiting
        try:
            node.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    if any(node.poll() is None for node in nodes):
        for node in nodes:
            kill_tree(node.pid)
        for reader in readers:
            reader.join(10)
        pytest.fail(f"a node still running after {timeout:g} s (deadlock?):\n" +
                    "\n".join(f"--- node {i}\n{out[-3000:]}" for i, out in enumerate(outputs)))
    for node in nodes:
        node.wait()
    return outputs
