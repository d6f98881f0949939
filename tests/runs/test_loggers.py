"""Loggers of today's releases, for real: MLflow 3 on its default store and on a ``sqlite:`` URI, W&B offline;
each named after the objective (``dpo``) and the run folder. (TensorBoard and CSV: tests/callbacks/test_console.py.)

Each run is a ``lit-align`` subprocess, as a user starts it: MLflow keeps its tracking URI in a process global.
Skipped when the logger's package is not installed (``pip install "lit-align[loggers]"``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.extended  # three short runs with the loggers' own start-up: about a minute

ROOT = Path(__file__).resolve().parents[2]


def _fit(folder: Path, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "LIT_ALIGN_"))}
    env.update(HF_HUB_OFFLINE="1", LIT_ALIGN_CACHE=str(folder / ".cache"), WANDB_SILENT="true")
    proc = subprocess.run(
        [sys.executable, "-m", "lit_align.cli", "fit", "--config", str(ROOT / "configs" / "dpo.yaml"),
         "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
         "--trainer.accelerator=cpu", "--export.enabled=false", *extra],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    return output


def _mlflow_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("dpo")  # was "lightning_logs"
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return run


@pytest.mark.parametrize("store", ["default", "sqlite"])
def test_mlflow_3_runs_on_its_default_store_and_on_sqlite(tmp_path, store):
    pytest.importorskip("mlflow")
    # before: the default was Lightning's file store, refused by MLflow 3 ("maintenance mode", a union-type dump);
    # a sqlite: URI ended in an AssertionError traceback (no log_dir for config.yaml)
    extra = [] if store == "default" else ["--trainer.logger.tracking_uri=sqlite:///tracking.db"]
    output = _fit(tmp_path, "--trainer.logger", "MLFlowLogger", *extra)
    database = tmp_path / ("mlflow.db" if store == "default" else "tracking.db")
    run = _mlflow_run(f"sqlite:///{database}")
    assert run.info.run_name == os.path.join("runs", "dpo")  # was a random name
    assert run.data.metrics["train/loss"] > 0 and run.info.status == "FINISHED"
    assert (tmp_path / "runs" / "dpo" / "config.yaml").is_file()
    assert f"experiment 'dpo', run {run.info.run_id}" in output


def test_wandb_offline_names_the_project_and_run(tmp_path):
    pytest.importorskip("wandb")
    output = _fit(tmp_path, "--trainer.logger", "WandbLogger", "--trainer.logger.offline", "true")
    (record,) = (tmp_path / "runs" / "dpo" / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()  # the run's protobuf records: project and display name as plain strings
    assert b"runs/dpo" in data and b"train/loss" in data
    assert "W&B project 'dpo', run 'runs/dpo'" in output
