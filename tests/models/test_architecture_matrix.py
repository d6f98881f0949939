"""Every causal-LM architecture transformers registers, built tiny, through lit-align's fast paths: exact (1e-5 per
token against the model's own forward, rows longer than any window) or falling back with its line
(``benchmarks/architecture_matrix.py``; the table is docs/architectures.md). A sample runs in the default step, the
whole registry in the extended one."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _matrix():
    spec = importlib.util.spec_from_file_location("architecture_matrix",
                                                  os.path.join(ROOT, "benchmarks", "architecture_matrix.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check(outcomes):
    wrong = [f"{o.model_type}: {o.detail}" for o in outcomes if o.status == "wrong"]
    assert not wrong, wrong
    for outcome in outcomes:
        assert outcome.status != "fallback" or all(line.startswith("fast path: ") for line in outcome.lines)
        assert outcome.status != "not buildable" or outcome.detail  # the reason is listed


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_sample_of_the_registry(one_thread):
    """Every 40th registered architecture (the registry's order, not a hand-picked list)."""
    matrix = _matrix()
    outcomes = matrix.run(matrix.model_types()[::40])
    _check(outcomes)
    assert any(o.status == "exact" for o in outcomes)


@pytest.mark.extended
def test_every_registered_architecture(one_thread):
    matrix = _matrix()
    outcomes = matrix.run()
    _check(outcomes)
    assert len(outcomes) == len(matrix.model_types()) and sum(o.status == "exact" for o in outcomes) > 50
