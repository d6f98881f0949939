"""One line for what Lightning and torch raise once a run is built (the settings and inputs were checked before).

``mapped_error`` turns such an error into a ``UserError`` naming the setting or file and the fix, or returns None
for a genuine bug (whose traceback is then shown):

- Lightning's refusal of a setting combination (``MisconfigurationException``) at any point of the run;
- a checkpoint whose weights do not fit the objective (``predict --ckpt_path`` on another objective's checkpoint):
  answered with the checkpoint's run manifest, which names the objective that wrote it
  (``lit_align.runs.manifest.objective_mismatch``), or else with what differs (missing and unexpected weights).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Iterator

from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_align.errors import UserError

_STATE_DICT = re.compile(r"Error\(s\) in loading state_dict for (\w+)")


def mapped_error(err: BaseException, model=None, ckpt_path: str | None = None) -> UserError | None:
    """A one-line ``UserError`` for ``err`` raised while the run of ``model`` (from ``ckpt_path``) ran, or None."""
    if isinstance(err, UserError):
        return None
    if isinstance(err, MisconfigurationException):
        return UserError(f"trainer: {' '.join(str(err).split())}")
    if isinstance(err, RuntimeError) and _STATE_DICT.search(str(err)):
        return _state_dict_error(err, model, ckpt_path)
    return None


def _state_dict_error(err: RuntimeError, model, ckpt_path: str | None) -> UserError:
    """The manifest's one line when the checkpoint names another objective, else the weights that differ."""
    from lit_align.runs.checkpoint_io import shown_path
    from lit_align.runs.manifest import objective_mismatch

    where = shown_path(ckpt_path) if ckpt_path else "the checkpoint"
    mismatch = objective_mismatch(ckpt_path, model) if ckpt_path and model is not None else None
    if mismatch is not None:
        return mismatch
    text = str(err)
    missing = re.findall(r'"([^"]+)"', text.split("Missing key(s) in state_dict:", 1)[-1].split("Unexpected", 1)[0]) \
        if "Missing key(s)" in text else []
    unexpected = re.findall(r'"([^"]+)"', text.split("Unexpected key(s) in state_dict:", 1)[-1].split("size", 1)[0]) \
        if "Unexpected key(s)" in text else []
    shapes = len(re.findall(r"size mismatch for ", text))
    parts = [f"{len(missing)} weights missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{shapes} of another shape" if shapes else ""]
    differs = ", ".join(p for p in parts if p) or "its weights differ"
    objective = _STATE_DICT.search(text).group(1)
    return UserError(f"{where} does not fit {objective}: {differs}; load it with the config that trained it (the "
                     "same objective, model and LoRA settings)")


@contextlib.contextmanager
def one_line_run_errors(model=None, ckpt_path: str | None = None) -> Iterator[None]:
    """Raise ``mapped_error``'s ``UserError`` (from the original) for what the block raises, where there is one."""
    try:
        yield
    except Exception as err:
        mapped = mapped_error(err, model, ckpt_path if isinstance(ckpt_path, str) and os.path.isfile(ckpt_path)
                              else None)
        if mapped is None:
            raise
        raise mapped from err


def one_line_errors_of_run(run_subcommand):
    """Decorates ``LightningCLI._run_subcommand``: its errors through ``one_line_run_errors``, with the CLI's model
    and the subcommand's ``ckpt_path``."""

    @functools.wraps(run_subcommand)
    def run(cli, subcommand: str):
        with one_line_run_errors(cli.model, cli.config_init[subcommand].get("ckpt_path")):
            return run_subcommand(cli, subcommand)

    return run
