"""benchmarks/profile_dpo.py, the script the performance notes' DPO profile comes from, runs its four views on
tiny settings (extended step), and its saved-activations view sees the policy's activations and no parameter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "profile_dpo.py")


@pytest.mark.extended
def test_every_view_reports(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--steps", "1", "--warmup", "1", "--hidden", "64", "--layers", "1",
                          "--top", "40"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "aten::mm" in text and "end " in text and "packed rows, is_causal" in text
    saved = float(re.search(r"parameters excluded\): ([0-9.]+) MiB", text).group(1))
    assert saved > 0
    assert "(64, 64)" not in text  # a weight matrix of the hidden-64 model is a parameter, never an activation
