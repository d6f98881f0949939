"""One run per folder: what run a folder holds, known by content, and a fresh fit refused over another run.

A run's identity (``run_id``) is a digest of its manifest (``lit_align.runs.manifest``: objective, rows, seeds, pi_0,
batching, lengths) and of the objective's hyperparameters, leaving out what a resume may change (``max_steps``,
``max_epochs``, library versions). ``AlignCheckpoint`` writes it:

- next to the checkpoints, ``<checkpoints>/run.json`` (the identity, manifest and masked hyperparameters), so
  that a later ``fit`` into the folder can tell whether it continues the same run without reading a checkpoint;
- into the logger's version folder, ``<logs>/version_N/lit_align_run.json``, so that ``lit-align plot`` joins the
  versions of one run (a run and its resumes) and never those of another run written into the same folder.

A resume (``fit`` with ``ckpt_path``) keeps the identity recorded beside its checkpoint, also when it changes
settings a resume may change (hyperparameters, with a warning): it continues that run.

A fresh ``fit`` (no ``--ckpt_path``) into a folder whose ``run.json`` names another run is refused in one line
naming the differences, the command that resumes the run there and the option that starts this one elsewhere;
``--checkpoint.other_run replace`` lets it overwrite that run instead. The same configuration run again into its
own folder is the same run, and replaces its outputs as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_align.errors import UserError
from lit_align.runs.atomic import atomic_write_text
from lit_align.runs.manifest import VERSIONED, ManifestComparison, _plain
from lit_align.runs.secrets import redact

#: The run record next to the checkpoints.
RECORD_NAME = "run.json"
#: The run identity in each logger version folder.
LOG_RECORD_NAME = "lit_align_run.json"
# What a resume may change without becoming another run.
_NOT_IDENTITY = ("max_steps", "max_epochs", "versions")


class OtherRunError(UserError):
    """A fresh fit would write over another run's outputs."""


def plain_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Hyperparameters as JSON values (masked), comparable with those read back from ``run.json``."""
    return json.loads(json.dumps(redact(_plain(dict(hparams or {}))), sort_keys=True, default=str))


def run_record(manifest: Mapping[str, Any], hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"run_id", "manifest", "hparams"}`` of a run."""
    manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    hparams = plain_hparams(hparams)
    core = {k: v for k, v in manifest.items() if k not in _NOT_IDENTITY}
    digest = hashlib.sha256(json.dumps({"manifest": core, "hparams": hparams}, sort_keys=True).encode())
    return {"run_id": digest.hexdigest()[:16], "manifest": manifest, "hparams": hparams}


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record in ``path`` (a ``run.json`` or ``lit_align_run.json``), or None when absent or unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run_id" in record else None


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``path`` whole or not at all (``lit_align.runs.atomic``)."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def check_fresh_fit(checkpoint_dir: str | os.PathLike, root_dir: str | os.PathLike,
                    record: Mapping[str, Any]) -> None:
    """Refuse a fresh fit whose ``record`` is not the run recorded in ``checkpoint_dir`` (see the module docstring)."""
    saved = read_record(Path(checkpoint_dir) / RECORD_NAME)
    if saved is None or saved.get("run_id") == record["run_id"]:
        return
    comparison = ManifestComparison(saved.get("manifest") or {}, record["manifest"], saved.get("hparams") or {},
                                     record["hparams"])
    changes = [c for c in comparison.refusals + comparison.warnings if not _is_version(c)]
    what = ", ".join(changes[:6]) + (", ..." if len(changes) > 6 else "") if changes else "another configuration"
    root = Path(root_dir)
    raise OtherRunError(
        f"{root} holds another run ({what}): resume that run with --ckpt_path last, or give this one its own "
        f"folder with --trainer.default_root_dir {_sibling(root)} (or --checkpoint.other_run replace to overwrite it)")


def mark_resuming(trainer, ckpt_path) -> None:
    """Tell the checkpoint callback, on every process, whether the coming fit resumes (``ckpt_path`` given), so
    that it checks a fresh fit against the folder's run in ``setup``, before the objective's own set-up writes
    anything (a reward stage); Lightning itself knows the checkpoint only after ``setup``."""
    for callback in trainer.callbacks:
        if hasattr(callback, "resuming"):
            callback.resuming = ckpt_path is not None


def _is_version(change: str) -> bool:
    return change.split(" ", 1)[0] in VERSIONED


def _sibling(root: Path) -> str:
    """The first ``<root>-2``, ``<root>-3``, ... that does not exist yet."""
    number = 2
    while Path(f"{root}-{number}").exists():
        number += 1
    return f"{root}-{number}"
