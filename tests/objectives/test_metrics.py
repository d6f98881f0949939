"""Logged means are example-weighted: correct under gradient accumulation and across ranks."""

import csv
import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from support.cli import fit_args

from lit_align.cli.app import build_cli
from lit_align.data.sources import load_rows
from lit_align.objectives.metrics import StageMeans


def test_stage_means_are_example_weighted():
    """Micro-batch 1 has accuracies [1, 1, 1], micro-batch 2 has [0]: the mean is 3/4, not (1 + 0) / 2."""
    means = StageMeans()
    means.update({"acc": torch.tensor([1.0, 1.0, 1.0]), "loss": torch.tensor(2.0)})
    means.update({"acc": torch.tensor([0.0]), "loss": torch.tensor(4.0)})
    computed = means.compute()
    assert computed["acc"].item() == pytest.approx(0.75)
    assert computed["loss"].item() == pytest.approx(3.0)  # scalars count once each
    means.reset()
    assert means.compute() == {}
    means.update({"loss": torch.tensor([5.0, 7.0], dtype=torch.bfloat16)})  # after a reset: only what came since
    assert list(means.compute()) == ["loss"] and means.compute()["loss"].item() == pytest.approx(6.0)


def test_a_nan_value_shows_in_the_mean():
    """torchmetrics' default drops NaNs with a warning; a NaN loss must show in the logs instead."""
    means = StageMeans()
    means.update({"loss": torch.tensor([1.0, float("nan")])})
    assert torch.isnan(means.compute()["loss"])


def _two_ranks(rank: int, init_file: str, results: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a collective left waiting fails instead of hanging
    try:
        means = StageMeans()
        for _ in range(2):  # two logging periods: the names of the first must not leak into the second
            if rank == 0:  # rank 0 saw [1, 1, 1, 1] and a name rank 1 never saw
                means.update({"acc": torch.ones(4), "only_rank0": torch.tensor([2.0, 4.0])})
            else:
                means.update({"acc": torch.zeros(2), "only_rank1": torch.tensor(6.0)})
            first = means.compute()
            means.reset()
        means.update({"acc": torch.ones(1)} if rank == 0 else {})  # a period where rank 1 saw nothing at all
        second = means.compute()
        results[rank] = ({k: v.item() for k, v in first.items()}, {k: v.item() for k, v in second.items()})
    finally:
        dist.destroy_process_group()


def test_means_over_two_ranks_weight_by_examples_and_agree_on_names(tmp_path):
    """Rank 0 saw [1, 1, 1, 1] and rank 1 saw [0, 0]: the global mean is 4/6 = 0.6667 (a mean of means says
    0.5). A name one rank never saw is summed over the ranks that did, on every rank, without a deadlock."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.start_processes(_two_ranks, args=(str(tmp_path / "init"), results), nprocs=2, start_method="fork")
    expected = {"acc": pytest.approx(4 / 6), "only_rank0": pytest.approx(3.0), "only_rank1": pytest.approx(6.0)}
    assert results[0][0] == results[1][0] == expected
    assert results[0][1] == results[1][1] == {"acc": 1.0}


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
