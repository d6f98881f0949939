"""What a user sees: a quiet console, a progress bar without v_num, plots without code, Lightning's switches honoured,
gradient clipping by default with its norm logged."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import torch

from support.cli import fit_args, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# lit-align's own one-line messages and Lightning's own (progress bar, why fit stopped); nothing else may appear.
EXPECTED = (
    r"^data: ", r"^run: ", r"^`Trainer\.fit` stopped", r"^exported the trained model", r"^reference cache: ",
    r"^reward (stage|model)", r"^plots: ", r"^seeds: ", r"^step \d+/\d+ \(\d+%\), ", r"^done: \d+ optimizer steps in ",
    r"^  (metrics|checkpoints|export): ", r"^\s*$",
)


def _fit(directory, *extra: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("LIT_ALIGN_VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lit_align.cli", "fit", "--config", os.path.join(ROOT, "configs", "dpo.yaml"),
         "--trainer.max_steps=3",
         "--trainer.accelerator=cpu", "--trainer.log_every_n_steps=1", "--trainer.default_root_dir=run", *extra],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return (proc.stdout + proc.stderr).splitlines()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("console")
    return directory, _fit(directory)


def test_default_run_shows_only_lit_align_and_lightning_lines(default_run):
    _, lines = default_run
    unexpected = [line for line in lines if not any(re.search(p, line) for p in EXPECTED)]
    assert not unexpected, "unexpected console lines:\n" + "\n".join(unexpected)
    text = "\n".join(lines)
    assert "v_num" not in text and "FLOPs" not in text
    for line in ("data: training on tiny [train]", "run: DPO on tiny", "exported the trained model"):
        assert line in text


def test_a_run_ends_with_its_summary_after_plain_progress_lines(default_run):
    _, lines = default_run  # a subprocess: its output is not a terminal
    assert any(re.match(r"step 3/3 \(100%\), train/loss [\d.]+, [\d.]+ steps/s, ", line) for line in lines)
    done = next(i for i, line in enumerate(lines) if line.startswith("done: "))
    assert re.match(r"done: 3 optimizer steps in 0:0\d:\d\d, [\d.]+ samples/s; train/loss [\d.]+", lines[done])
    assert lines[done + 1:] == [
        f"  metrics: {os.path.join('run', 'logs', 'version_0', 'metrics.csv')}",
        f"  checkpoints: {os.path.join('run', 'checkpoints')} (last.ckpt)",
        f"  export: {os.path.join('run', 'hf_model')}",
    ]


def test_verbose_keeps_every_line(tmp_path):
    text = "\n".join(_fit(tmp_path, "--verbose", "--trainer.enable_progress_bar=false"))
    assert "Seed set to 0" in text and "GPU available" in text  # what the quiet console removes, back


def test_plot_writes_the_run_curves(default_run, tmp_path):
    directory, _ = default_run
    assert run_main(["plot", str(directory / "run"), "--out", str(tmp_path / "one")]) == 0
    names = {p.name for p in (tmp_path / "one").iterdir()}
    assert {"loss.png", "rewards.png", "accuracy.png", "kl.png", "entropy.png", "learning_rate.png"} <= names
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "one" / "loss.png").shape[0] > 100  # a real picture

    assert run_main(["plot", str(directory / "run"), str(directory / "run"), "--out", str(tmp_path / "two")]) == 0
    assert (tmp_path / "two" / "loss.png").stat().st_size > 0
    assert run_main(["plot", str(tmp_path / "missing")]) == 2  # one line, not a traceback


def test_plot_joins_the_versions_of_a_resumed_run(tmp_path):
    from lit_align.runs.plot import read_run

    for version, rows in ((0, [(0, 1.0), (1, 0.9)]), (1, [(1, 0.8), (2, 0.7)])):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        with open(folder / "metrics.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "step", "train/loss"])
            writer.writerows([(0, step, value) for step, value in rows])
    assert read_run(tmp_path)["train/loss"] == [(0, 1.0), (1, 0.8), (2, 0.7)]  # the resumed version wins step 1


def test_grad_norm_is_logged_by_default(default_run):
    directory, _ = default_run
    with open(directory / "run" / "logs" / "version_0" / "metrics.csv") as handle:
        norms = [float(r["train/grad_norm"]) for r in csv.DictReader(handle) if r.get("train/grad_norm")]
    assert len(norms) == 3 and all(n > 0 for n in norms)


def test_clipping_logs_the_norm_before_clipping():
    from lit_align.objectives import DPO

    module = DPO(max_grad_norm=0.5)
    params = module.trainable_parameters()
    for p in params:
        p.grad = torch.ones_like(p)
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    optimizer = torch.optim.SGD(params, lr=0.1)
    module.clip_and_log_gradients(optimizer, module.max_grad_norm)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert after == pytest.approx(0.5, rel=1e-4)
    assert module._metrics["train"].compute()["grad_norm"] == pytest.approx(before.item(), rel=1e-5)


def test_enable_checkpointing_false_is_honoured(run_dir):
    code = run_main(fit_args("dpo.yaml", "--trainer.enable_checkpointing=false", "--export.enabled=false", steps=2))
    assert code == 0
    assert not (run_dir / "runs" / "test" / "checkpoints").exists()


def test_help_is_short_and_points_on(capsys):
    assert run_main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 40
    for name in ("DPO", "PMLE", "PreferenceDistillation", "ReverseKL", "PreferenceDataModule", "--model.help"):
        assert name in text


def test_help_with_a_config_lists_its_objective_and_data_arguments(capsys):
    assert run_main(["fit", "--config", os.path.join(ROOT, "configs", "pdistill.yaml"), "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("--model: lit_align.objectives.PreferenceDistillation")
    names = {line.split()[0] for line in lines if line.startswith("  --")}
    assert {"--model.gamma", "--model.beta_mode", "--model.reward_stage", "--data.val_split"} <= names
    assert not any(name.startswith("--trainer.") for name in names) and len(lines) < 90


def test_a_misspelt_argument_answers_in_three_lines_with_the_nearest_name(run_dir, capsys):
    assert run_main(fit_args("dpo.yaml", "--model.betta=0.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3
    assert "has no argument 'betta'; did you mean 'beta'?" in err[0]


def test_tensorboard_logger_by_class_name_alone_writes_under_the_run_folder(run_dir):
    assert run_main(fit_args("dpo.yaml", "--trainer.logger=TensorBoardLogger", "--export.enabled=false", steps=2)) == 0
    events = list((run_dir / "runs" / "test" / "logs").glob("version_*/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_loggers_named_alone_get_the_run_folder_and_a_given_save_dir_wins():
    from types import SimpleNamespace

    from lit_align.runs.loggers import RUN_DIR, resolve_logger_dirs, with_logger_save_dir

    args = with_logger_save_dir(["fit", "--trainer.logger", "MLFlowLogger"])
    assert args[-1] == f"--trainer.logger.init_args.save_dir={RUN_DIR}"
    assert with_logger_save_dir(["--trainer.logger=WandbLogger", "--trainer.logger.save_dir=here"])[-1] == (
        "--trainer.logger.save_dir=here")
    csv = SimpleNamespace(class_path="lightning.pytorch.loggers.CSVLogger",
                          init_args={"save_dir": RUN_DIR, "name": "lightning_logs"})
    resolve_logger_dirs({"default_root_dir": "runs/x", "logger": csv})
    assert csv.init_args == {"save_dir": "runs/x", "name": "logs"}


def test_loggers_are_named_after_the_objective_and_the_run_folder(monkeypatch):
    from types import SimpleNamespace

    from lit_align.runs.loggers import RUN_DIR, resolve_logger_dirs

    monkeypatch.setattr("lit_align.runs.loggers.default_mlflow_store", lambda: "sqlite:///mlflow.db")
    model = SimpleNamespace(class_path="lit_align.objectives.DPO")
    mlflow = SimpleNamespace(class_path="lightning.pytorch.loggers.MLFlowLogger", init_args={
        "save_dir": RUN_DIR, "experiment_name": "lightning_logs", "run_name": None, "tracking_uri": None})
    wandb = SimpleNamespace(class_path="lightning.pytorch.loggers.WandbLogger",
                            init_args={"save_dir": RUN_DIR, "project": None, "name": None})
    resolve_logger_dirs({"default_root_dir": "runs/dpo", "logger": [mlflow, wandb]}, model)
    # was: "lightning_logs" for every run, and MLflow's file store (refused by MLflow 3)
    assert mlflow.init_args == {"save_dir": "runs/dpo", "experiment_name": "dpo", "run_name": "runs/dpo",
                                "tracking_uri": "sqlite:///mlflow.db"}
    assert wandb.init_args == {"save_dir": "runs/dpo", "project": "dpo", "name": "runs/dpo"}
    given = SimpleNamespace(class_path="lightning.pytorch.loggers.MLFlowLogger", init_args={
        "save_dir": "mine", "experiment_name": "exp", "run_name": "r1", "tracking_uri": "sqlite:///x.db"})
    resolve_logger_dirs({"default_root_dir": "runs/dpo", "logger": given}, model)
    assert given.init_args["experiment_name"] == "exp" and given.init_args["tracking_uri"] == "sqlite:///x.db"


def test_plot_curves_callback_draws_the_run_at_the_end_of_fit(run_dir):
    callback = '{"class_path": "lit_align.callbacks.PlotCurves"}'
    args = fit_args("dpo.yaml", f"--trainer.callbacks+={callback}", "--trainer.log_every_n_steps=1",
                    "--export.enabled=false", steps=3)
    assert run_main(args) == 0
    figures = {p.name for p in (run_dir / "runs" / "test" / "plots").iterdir()}
    assert {"loss.png", "rewards.png", "learning_rate.png"} <= figures
