"""Trainer settings checked before anything runs, and debug runs kept out of a real run's outputs.

Each check ends ``lit-align`` with one line naming the setting and the fix (``UserError``) where Lightning or the
argument parser would print a traceback or a page of type errors: a run folder that is a file or cannot be
written, ``max_steps`` below -1, a precision Lightning does not know or whose plugin cannot be built.

A ``fast_dev_run`` is a debug run: it writes under ``<run folder>/debug/`` (checkpoints, export, logs), so that
trying a change on an existing run folder never replaces its ``last.ckpt`` or ``hf_model/``. Runs that only
shorten an epoch (``limit_train_batches``) are real runs and write where they are told: their checkpoints are
meant to be resumed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterator

from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_info

from lit_align.errors import UserError
from lit_align.runs.outputs import disk_error

DEBUG_FOLDER = "debug"


def _literals(hint) -> list:
    args = typing.get_args(hint)
    return [value for arg in args for value in _literals(arg)] if args else [hint]


#: The values ``trainer.precision`` accepts, in Lightning's own order.
PRECISIONS = list(dict.fromkeys(str(p) for p in _literals(_PRECISION_INPUT)))


def check_trainer_settings(trainer: dict, config: dict) -> None:
    """Check the run folder and ``max_steps`` and redirect a debug run; ``trainer`` is the parsed ``trainer``
    section (changed in place), ``config`` the subcommand's whole config."""
    max_steps = trainer.get("max_steps")
    if isinstance(max_steps, int) and max_steps < -1:
        raise UserError(f"trainer.max_steps={max_steps}: use a number of optimizer steps (0 or more), or -1 for no "
                        "limit (the epochs then decide)")
    if trainer.get("fast_dev_run"):
        _redirect_debug_run(trainer, config)
    check_run_folder(trainer["default_root_dir"])


#: The options that bound a run, as the refusal of an unbounded one names them.
LIMITS = "--trainer.max_steps N, --trainer.max_epochs N or --trainer.max_time DD:HH:MM:SS"


def apply_step_limit(trainer: dict, command_line: list[str]) -> None:
    """An explicit ``--trainer.max_steps N`` on the command line is the run's limit: it lifts an epoch cap the
    config files set (``max_epochs`` becomes -1), unless ``--trainer.max_epochs`` is on the same command line."""
    given = [token.split("=", 1)[0] for token in command_line if token.startswith("--trainer.max_")]

    def on_command_line(option: str) -> bool:  # the parser also takes an unambiguous prefix (--trainer.max_step)
        return any(option.startswith(name) and len(name) > len("--trainer.max_") for name in given)

    if on_command_line("--trainer.max_steps") and not on_command_line("--trainer.max_epochs") and trainer.get(
            "max_steps", -1) >= 0:
        trainer["max_epochs"] = -1


def check_bounded(trainer: dict) -> None:
    """Refuse a ``fit`` that nothing bounds (Lightning would run 1000 epochs when neither ``max_epochs`` nor
    ``max_steps`` is set, and forever with ``max_epochs: -1``)."""
    if trainer.get("fast_dev_run") or trainer.get("max_time") is not None:
        return
    if trainer.get("max_steps", -1) in (-1, None) and trainer.get("max_epochs") in (None, -1):
        epochs = "unset, where Lightning would run 1000 epochs" if trainer.get("max_epochs") is None else "-1"
        raise UserError(f"the run has no limit (trainer.max_steps is unset and trainer.max_epochs {epochs}): give "
                        f"{LIMITS}")


def map_optimisation_settings(trainer: dict, model, manual: bool) -> None:
    """The one place that decides how Lightning's optimisation switches apply to an objective (``model``: the
    parsed ``model`` section; ``manual``: the objective optimises by hand, as the on-policy ones do).

    ``trainer.gradient_clip_val`` (by norm) becomes the objective's own clipping, ``model.max_grad_norm``, for every
    objective, and is then taken off the Trainer (which refuses it under manual optimisation). An objective that
    optimises by hand refuses ``accumulate_grad_batches`` and clipping by value in one line naming its own
    settings."""
    name = str(getattr(model, "class_path", "the objective")).rsplit(".", 1)[-1]
    clip, algorithm = trainer.get("gradient_clip_val"), trainer.get("gradient_clip_algorithm")
    if manual and (trainer.get("accumulate_grad_batches") or 1) != 1:
        raise UserError(f"trainer.accumulate_grad_batches={trainer['accumulate_grad_batches']}: {name} samples and "
                        "optimises each batch itself (model.epochs_per_batch passes of model.mini_batches updates) "
                        "and accumulates nothing: for more prompts per update raise --data.batch_size, to split each "
                        "update's forward and backward raise --model.micro_batches")
    if clip is None or clip <= 0:
        return
    if algorithm not in (None, "norm"):
        if manual:
            raise UserError(f"trainer.gradient_clip_algorithm={algorithm}: {name} clips the gradient norm only; "
                            f"use --model.max_grad_norm {clip}")
        return  # an objective optimised by Lightning clips by value as Lightning does (AlignmentModule)
    model.init_args.max_grad_norm = float(clip)
    trainer["gradient_clip_val"] = None


def check_run_folder(folder: str | os.PathLike) -> None:
    """Create the run folder if needed and prove it writable, or raise one line saying why not."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"trainer.default_root_dir {folder} is a file, not a folder: choose a folder for the run's "
                        "checkpoints, logs and export")
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"trainer.default_root_dir {folder}: {parent} is a file, not a folder: choose another "
                        "folder for the run's outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        mapped = disk_error(err, folder)
        reason = mapped if mapped is not None else f"{os.strerror(err.errno or errno.EIO)} creating or writing {folder}"
        raise UserError(f"trainer.default_root_dir cannot be used: {reason}") from err


def _redirect_debug_run(trainer: dict, config: dict) -> None:
    root = trainer["default_root_dir"]
    debug = os.path.join(root, DEBUG_FOLDER)
    trainer["default_root_dir"] = debug
    moved = []
    for section in ("checkpoint", "export"):  # explicit output folders would still name the real run's files
        options = config.get(section)
        if options is not None and options.get("dirpath") is not None:
            options["dirpath"] = None
            moved.append(f"{section}.dirpath")
    also = f" (and {', '.join(moved)} with it)" if moved else ""
    rank_zero_info(f"fast_dev_run: a debug run writes under {debug}{also}, never into the outputs of {root}")


@contextlib.contextmanager
def one_line_parse_errors(*parsers) -> Iterator[None]:
    """Turn the parsers' page-long type error for ``trainer.precision`` and ``trainer.plugins``, and a misspelt
    argument (with the nearest valid names), into a one-line ``UserError``; every other parse error is reported by
    the parser as usual (usage and exit status 2)."""

    from lit_align.cli.help import unknown_class_message, unknown_key_message

    def one_line(report, parser):
        def error(message: str, ex: Exception | None = None):
            line = setting_message(message) or unknown_class_message(message) or unknown_key_message(parser, message)
            if line is not None:
                raise UserError(line) from ex
            return report(message, ex)
        return error

    for parser in parsers:
        parser.error = one_line(parser.error, parser)  # shadows the method on this instance only
    try:
        yield
    finally:
        for parser in parsers:
            vars(parser).pop("error", None)


def setting_message(parse_error: str) -> str | None:
    """One line for a parse error of ``trainer.precision`` or ``trainer.plugins``; ``None`` for others."""
    key = re.match(r'Parser key "([^"]+)"', parse_error)
    given = re.search(r"Given value: (.*)", parse_error)
    given = given.group(1).strip() if given else "?"
    if key and key.group(1) == "trainer.precision":
        return f"trainer.precision={given} is not a precision Lightning knows; use one of: {', '.join(PRECISIONS)}"
    if key and key.group(1) == "trainer.plugins":
        problem = re.search(r"Problem with given class_path (.*)\n?(.*)", parse_error)
        why = " ".join(problem.groups()).strip() if problem else (
            f"{given} is not a precision, cluster environment, checkpoint IO or layer sync plugin")
        return f"trainer.plugins: {why}"
    return None


def trainer_error(err: BaseException) -> UserError | None:
    """A one-line ``UserError`` for the Trainer's refusal of its settings (``MisconfigurationException``), or for
    a precision plugin whose package is missing (``precision: transformer-engine`` without it); else ``None``."""
    if isinstance(err, MisconfigurationException):
        return UserError(f"trainer: {err}")
    if isinstance(err, ImportError) and "Requirement" in str(err):
        return UserError(f"trainer: a setting needs a package that is not installed: {err}")
    return None


def instantiate_checked(build: Any, *args, **kwargs):
    """``build(*args, **kwargs)`` with ``trainer_error`` applied to what it raises."""
    try:
        return build(*args, **kwargs)
    except Exception as err:
        mapped = trainer_error(err)
        if mapped is None:
            raise
        raise mapped from err
