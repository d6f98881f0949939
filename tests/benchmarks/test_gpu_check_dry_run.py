"""benchmarks/gpu_check.py: its CPU dry run (extended step) runs every part of the GPU check and reports each;
the default suite only asks for its help and checks the batch-size search, both in well under a second."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
STATUSES = {"ok", "fail", "timeout", "skipped"}


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_every_part():
    out = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for part in _gpu_check().PARTS:
        assert part in out.stdout


@pytest.mark.parametrize("limit,start,expected", [(37, 8, (36, 40)), (3, 8, (3, 4)), (10**6, 1, (64, None)),
                                                  (0, 1, (0, 1))])
def test_batch_search_brackets_the_largest_that_fits(limit, start, expected):
    tried = []

    def fits(n):
        tried.append(n)
        return n <= limit

    assert _gpu_check().search(fits, start, cap=64, deadline=float("inf")) == expected
    assert len(tried) == len(set(tried))  # no size tried twice


@pytest.mark.extended
def test_dry_run_reports_every_part(tmp_path):
    """The same code path as on a GPU at tiny sizes: every part ends with a status; DPO with the throughput monitor,
    the batch search and FSDP2 on one process succeed, the first two with their figures."""
    module = _gpu_check()
    out = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = summary["parts"]
    assert set(parts) == set(module.PARTS)
    for name, part in parts.items():
        assert part["status"] in STATUSES and part["wall_s"] >= 0, (name, part)
        assert f"| {name} | {part['status']} |" in out.stdout  # the printed table
    assert (tmp_path / "gpu_check.md").read_text() in out.stdout
    dpo = parts["dpo_mfu"]
    assert dpo["status"] == "ok", dpo
    assert parts["fsdp2"]["status"] == "ok", parts["fsdp2"]
    assert dpo["tokens_per_sec"] > 0 and 0 < dpo["mfu_prompt_once"] <= dpo["mfu"]
    batch = parts["max_batch"]
    assert batch["lit"]["status"] == "ok" and batch["lit"]["largest_fit"] == batch["lit"]["cap"], batch
    assert batch["trl"]["status"] in ("ok", "skipped"), batch
