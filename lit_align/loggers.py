"""Loggers chosen by class name alone write under the run folder.

``--trainer.logger TensorBoardLogger`` (or ``WandbLogger``, ``MLFlowLogger``, ``CSVLogger``, or any logger class
with a ``save_dir`` argument) needs no other setting: its ``save_dir`` becomes the run folder
(``trainer.default_root_dir``; MLflow's file store goes to ``<run>/mlruns``) and TensorBoard's and CSV's
experiment name ``logs``, next to the default CSV logs. A ``save_dir`` given on the command line or in a config
wins. TensorBoard needs ``tensorboard`` or ``tensorboardX`` installed, W&B ``wandb`` (``offline: true`` runs
without an account), MLflow ``mlflow``.
"""

from __future__ import annotations

import importlib
import inspect
import os

#: Stands for the run folder until ``default_root_dir`` is known (after parsing).
RUN_DIR = "<lit-align run folder>"
_FLAG = "--trainer.logger"


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


def resolve_logger_dirs(trainer_config) -> None:
    """Replace the run-folder placeholder in the parsed ``trainer.logger`` config (a Namespace or a list of them)."""
    root = trainer_config.get("default_root_dir") or "."
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None or init_args.get("save_dir") != RUN_DIR:
            continue
        is_mlflow = str(logger.class_path).endswith("MLFlowLogger")
        init_args["save_dir"] = os.path.join(root, "mlruns") if is_mlflow else root
        if init_args.get("name") == "lightning_logs":  # TensorBoard and CSV: next to the default logs
            init_args["name"] = "logs"
