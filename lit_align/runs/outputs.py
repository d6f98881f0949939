"""Run outputs that never lie: a folder appears whole or not at all, and a full disk is one line.

``atomic_directory(target)`` hands out an empty temporary folder next to ``target`` (the same file system, so the
final move is a rename; ``lit_align.runs.atomic.atomic_folder``). Only once everything is written is the previous
``target`` moved aside and the new folder renamed into its place. A process killed while writing leaves the
previous complete folder and a temporary that the next write on this host removes; killed between the two renames,
it leaves the previous folder under a hidden ``.old`` name, which the next write puts back. Never a folder with
weights but no tokenizer.

``disk_errors(path)`` turns the write failures a user fixes on their side (no space, no permission, a read-only
file system, a quota) into ``DiskWriteError``, whose one line names the file and the fix; ``lit-align`` treats
any such failure the same way as a last resort (``unplaced_disk_errors``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Iterator

from lit_align.runs.atomic import atomic_folder
from lit_align.runs.checkpoint_io import AtomicCheckpointIO
from lit_align.errors import UserError
from lit_align.runs.secrets import redact

#: errno -> what to do about it. The message itself starts with ``os.strerror(errno)``.
_FIXES = {
    errno.ENOSPC: "free space there or write the run elsewhere (--trainer.default_root_dir)",
    errno.EDQUOT: "free space within your quota or write the run elsewhere (--trainer.default_root_dir)",
    errno.EACCES: "make the folder writable or write the run elsewhere (--trainer.default_root_dir)",
    errno.EPERM: "make the folder writable or write the run elsewhere (--trainer.default_root_dir)",
    errno.EROFS: "write the run on a writable file system (--trainer.default_root_dir)",
}
#: Files an export folder holds; a non-empty folder with none of them is not replaced (it is not an export).
_EXPORT_MARKERS = ("config.json", "adapter_config.json")


class DiskWriteError(UserError):
    """A run output could not be written for a reason outside lit-align (full disk, permissions, read-only)."""


def disk_error(err: BaseException, path: str | os.PathLike) -> DiskWriteError | None:
    """``err`` as a ``DiskWriteError`` naming ``path``, or ``None`` when it is not such a failure.

    Besides ``OSError``, writers that wrap the system error (safetensors, torch's zip writer) are recognised by
    the system's own wording in their message.
    """
    code = err.errno if isinstance(err, OSError) else None
    if code not in _FIXES:
        text = str(err)
        code = next((c for c in _FIXES if os.strerror(c) in text), None)
        if code is None:
            return None
    return DiskWriteError(f"{os.strerror(code)} writing {path}: {_FIXES[code]}")


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise full-disk, permission and read-only failures inside the block as a one-line ``DiskWriteError``."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as err:
        mapped = disk_error(err, path)
        if mapped is None:
            raise
        raise mapped from err


@contextlib.contextmanager
def unplaced_disk_errors() -> Iterator[None]:
    """The last resort for writes that no ``disk_errors`` names (loggers, sample files): such an ``OSError``
    raised anywhere in the block becomes one line, naming its file when the error knows it."""
    try:
        yield
    except OSError as err:
        if err.errno not in _FIXES:
            raise
        if err.errno in (errno.EACCES, errno.EPERM):
            where, fix = f"on {err.filename}", "check its permissions"
        else:
            where = f"writing {err.filename}" if err.filename else "while writing the run's logs or samples"
            fix = _FIXES[err.errno].replace("free space there", "free space on the run folder's file system")
        raise DiskWriteError(f"{os.strerror(err.errno)} {where}: {fix}") from err


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to write into; on success it replaces ``target`` whole (``atomic_folder``), with the
    disk failures a user fixes as one line, and only over a folder that is a model export (or empty)."""
    target = Path(target)
    with disk_errors(target):
        _check_replaceable(target)
        with atomic_folder(target) as temp:
            yield temp


class RunCheckpointIO(AtomicCheckpointIO):
    """``AtomicCheckpointIO`` whose disk failures are one line naming the checkpoint, and whose saved
    hyperparameters have every credential masked (the modules' own hyperparameters are left as they are)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        masked = dict(checkpoint)  # shallow: the caller's dict, and the modules' hparams inside it, stay unmasked
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in masked:
                masked[key] = redact(masked[key])
        with disk_errors(path):
            super().save_checkpoint(masked, path, storage_options)


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"cannot export to {target}: it is a file; choose a folder (export.dirpath)")
    if target.is_dir() and any(target.iterdir()) and not any((target / m).exists() for m in _EXPORT_MARKERS):
        raise UserError(f"refusing to replace {target}: it is not a model export (no config.json) and would be "
                        "deleted; choose a new or empty folder (export.dirpath)")
