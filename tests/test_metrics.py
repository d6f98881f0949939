"""Logged means are example-weighted: correct under gradient accumulation and across ranks."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import fit_args

from lit_align.cli import build_cli
from lit_align.data.sources import load_rows
from lit_align.metrics import MeanAccumulator


def test_mean_accumulator_is_example_weighted():
    """Micro-batch 1 has accuracies [1, 1, 1], micro-batch 2 has [0]: the mean is 3/4, not (1 + 0) / 2."""
    acc = MeanAccumulator()
    acc.update({"acc": torch.tensor([1.0, 1.0, 1.0]), "loss": torch.tensor(2.0)})
    acc.update({"acc": torch.tensor([0.0]), "loss": torch.tensor(4.0)})
    means = acc.compute()
    assert means["acc"].item() == pytest.approx(0.75)
    assert means["loss"].item() == pytest.approx(3.0)  # scalars count once each
    acc.reset()
    assert acc.compute() == {}


def test_mean_accumulator_all_reduce_weights_ranks_by_examples():
    """Rank 0 saw [1, 1, 1, 1] and rank 1 saw [0, 0]: the global mean is 4/6 = 0.6667 (a mean of means says 0.5)."""
    rank0, rank1 = MeanAccumulator(), MeanAccumulator()
    rank0.update({"acc": torch.ones(4)})
    rank1.update({"acc": torch.zeros(2)})
    other = {}
    rank1.compute(lambda t: other.setdefault("totals", t.clone()))  # capture rank 1's (sums, counts)
    means = rank0.compute(lambda t: t + other["totals"])  # the sum all-reduce of two ranks
    assert means["acc"].item() == pytest.approx(4 / 6)


def _conflicting_pairs(path: Path) -> Path:
    """The shipped pairs with every other one swapped: no policy gets them all right, so accuracies stay between
    0 and 1 (on the shipped pairs alone they reach 1.0 after one step, where a wrong reduction could hide)."""
    rows = list(load_rows("tiny"))[:64]
    for i in range(1, len(rows), 2):
        rows[i]["chosen"], rows[i]["rejected"] = rows[i]["rejected"], rows[i]["chosen"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_metrics(run_dir: Path, name: str, *extra: str) -> list[dict[str, float]]:
    root = f"runs/{name}"
    data = _conflicting_pairs(run_dir / "pairs.jsonl")
    build_cli(fit_args("dpo.yaml", "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=0",
                       f"--trainer.default_root_dir={root}", f"--data.path={data}", "--data.val_split=null",
                       "--export.enabled=false", *extra, steps=4))
    (metrics,) = (run_dir / root).glob("logs/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/rewards/accuracies")]
    return [{k: float(v) for k, v in r.items() if v} for r in rows]


def test_logged_accuracy_under_gradient_accumulation_equals_the_full_batch(run_dir):
    accumulated = _train_metrics(run_dir, "accumulate", "--data.batch_size=4", "--trainer.accumulate_grad_batches=2")
    full = _train_metrics(run_dir, "full", "--data.batch_size=8")
    assert len(accumulated) == len(full) == 4  # one row per optimizer step, not per micro-batch
    assert [r["step"] for r in accumulated] == [r["step"] for r in full]
    for acc_row, full_row in zip(accumulated, full):
        assert 0.0 <= acc_row["train/rewards/accuracies"] <= 1.0
        for name in ("train/rewards/accuracies", "train/loss", "train/rewards/margins", "train/logps/chosen"):
            assert acc_row[name] == pytest.approx(full_row[name], abs=1e-4), name
    # the later steps are not all 0 or 1: the comparison would catch a mean of two micro-batch means
    assert any(0.0 < r["train/rewards/accuracies"] < 1.0 for r in full[1:])
