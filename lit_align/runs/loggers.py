"""Loggers chosen by class name alone write under the run folder, named after the objective and the run.

``--trainer.logger TensorBoardLogger`` (or ``WandbLogger``, ``MLFlowLogger``, ``CSVLogger``, or any logger class
with a ``save_dir`` argument) needs no other setting: its ``save_dir`` becomes the run folder
(``trainer.default_root_dir``) and TensorBoard's and CSV's experiment name ``logs``, next to the default CSV logs.
W&B's project and MLflow's experiment are named after the objective (``dpo``), their run after the run folder
(``runs/dpo``), instead of Lightning's ``lightning_logs`` for all. MLflow writes to its own default store (MLflow
3: ``sqlite:///mlflow.db`` in the working folder, where ``mlflow ui`` finds it; ``MLFLOW_TRACKING_URI`` or
``--trainer.logger.tracking_uri`` choose another) rather than Lightning's default file store, which MLflow 3
refuses. A value given on the command line or in a config wins. TensorBoard needs ``tensorboard`` or
``tensorboardX`` installed, W&B ``wandb`` (``offline: true`` runs without an account), MLflow ``mlflow``
(``pip install "lit-align[loggers]"`` installs all three).
"""

from __future__ import annotations

import importlib
import inspect
import os

#: Stands for the run folder until ``default_root_dir`` is known (after parsing).
RUN_DIR = "<lit-align run folder>"
_FLAG = "--trainer.logger"
#: Lightning's default experiment / project name, replaced by the objective's.
LIGHTNING_NAME = "lightning_logs"


def _logger_class(value: str):
    import lightning.pytorch.loggers as loggers

    if "." not in value:
        return getattr(loggers, value, None)
    module, _, name = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _takes_save_dir(value: str) -> bool:
    cls = _logger_class(value)
    return cls is not None and inspect.isclass(cls) and "save_dir" in inspect.signature(cls.__init__).parameters


def with_logger_save_dir(args: list[str]) -> list[str]:
    """Command-line arguments where a logger named by class alone is given ``save_dir`` = the run folder.

    The placeholder goes right after the logger's name, so that a ``--trainer.logger.save_dir`` given later still
    wins; it is replaced by the run folder once the config is parsed (``resolve_logger_dirs``).
    """
    out: list[str] = []
    tokens = iter(enumerate(args))
    for i, token in tokens:
        out.append(token)
        if token == _FLAG and i + 1 < len(args):
            value = args[i + 1]
            out.append(next(tokens)[1])
        elif token.startswith(_FLAG + "="):
            value = token.split("=", 1)[1]
        else:
            continue
        if _takes_save_dir(value) and not any(a.startswith(f"{_FLAG}.") and "save_dir" in a for a in args):
            out.append(f"{_FLAG}.init_args.save_dir={RUN_DIR}")
    return out


def resolve_logger_dirs(trainer_config, model_config=None) -> None:
    """Complete the parsed ``trainer.logger`` config (a Namespace or a list of them): the run-folder placeholder
    becomes the run folder, Lightning's default names become the objective's and the run folder's, and MLflow
    without a tracking URI gets MLflow's own default store."""
    root = trainer_config.get("default_root_dir") or "."
    objective = str(getattr(model_config, "class_path", "") or "lit-align").rsplit(".", 1)[-1].lower()
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue
        kind = str(logger.class_path).rsplit(".", 1)[-1]
        if init_args.get("save_dir") == RUN_DIR:
            init_args["save_dir"] = root
            if init_args.get("name") == LIGHTNING_NAME:  # TensorBoard and CSV: next to the default logs
                init_args["name"] = "logs"
        if kind == "MLFlowLogger":
            _name_mlflow_run(init_args, objective, root)
        elif kind == "WandbLogger":
            if init_args.get("project") in (None, LIGHTNING_NAME):
                init_args["project"] = objective
            if init_args.get("name") is None:
                init_args["name"] = os.path.normpath(root)


def _name_mlflow_run(init_args, objective: str, root: str) -> None:
    if init_args.get("experiment_name") in (None, LIGHTNING_NAME):
        init_args["experiment_name"] = objective
    if init_args.get("run_name") is None:
        init_args["run_name"] = os.path.normpath(root)
    if not init_args.get("tracking_uri"):
        init_args["tracking_uri"] = default_mlflow_store()


def default_mlflow_store() -> str | None:
    """MLflow's own default tracking URI (``MLFLOW_TRACKING_URI``, else MLflow 3's ``sqlite:///mlflow.db`` in the
    working folder; MLflow 2's ``./mlruns``), or None without mlflow (Lightning then says it is missing)."""
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow.get_tracking_uri()


def logger_location(logger) -> str:
    """Where a logger's metrics of this run are, for the end-of-run summary."""
    kind = type(logger).__name__
    if kind == "CSVLogger":
        return os.path.join(logger.log_dir, "metrics.csv")
    if kind == "MLFlowLogger":
        uri = getattr(logger, "_tracking_uri", "?")
        return f"MLflow {uri}, experiment {logger._experiment_name!r}, run {logger.run_id}"
    if kind == "WandbLogger":
        run = getattr(logger, "_experiment", None)
        where = getattr(run, "dir", None) or logger.save_dir  # <save_dir>/wandb/<run>/files: name the run's folder
        where = os.path.dirname(where) if os.path.basename(where) == "files" else where
        return f"W&B project {getattr(logger, '_project', '?')!r}, run {getattr(logger, '_name', None)!r} ({where})"
    return str(getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or kind)
