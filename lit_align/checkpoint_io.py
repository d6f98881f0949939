"""Checkpoint files that are never half-written, and that load without running pickled code.

``AtomicCheckpointIO`` (the CLI installs it by default) streams the checkpoint into a temporary file in the
target's own directory, fsyncs it, and renames it over the target with ``os.replace``, which is atomic on POSIX
file systems: a process killed at any moment leaves either the previous ``last.ckpt`` or the new one, never a
truncated file. Lightning's own ``TorchCheckpointIO`` serialises the whole checkpoint into memory first and moves
it from the system temporary directory, which is a copy (not a rename) when that directory is on another file
system, and it never fsyncs.

Loading is ``torch.load(..., weights_only=True)``: tensors, containers and primitive values only, so a checkpoint
from someone else cannot execute code. lit-align's own configuration dataclasses are allow-listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: Test-only: ``SECONDS`` or ``SECONDS:N`` pauses in the middle of writing a checkpoint (every write, or only this
#: process's N-th), so a test can kill the process while the file is half-written.
WRITE_DELAY_ENV = "LIT_ALIGN_TEST_CHECKPOINT_WRITE_DELAY"
_writes = 0

# Temporary names must not contain "last": Lightning's `--ckpt_path last` picks the newest file whose name does.
_TEMP_PREFIX = ".ckpt-write-"
_TEMP_SUFFIX = ".tmp"


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be read; the message names it and says why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, fsynced writes and ``weights_only`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location, weights_only=weights_only is not False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same directory, fsync, and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    temp = path.parent / f"{_TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}"
    delay = _test_write_delay()
    try:
        with open(temp, "wb") as handle:
            torch.save(obj, _SlowWriter(handle, delay) if delay > 0 else handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the rename itself survives a power cut only once the directory is synced


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """Read a checkpoint with ``weights_only`` unpickling (lit-align's config dataclasses allowed).

    A file that needs arbitrary unpickling raises ``CheckpointLoadError`` naming the file and the offending
    global; load it with ``weights_only=False`` only if you trust where it came from.
    """
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "weights_only" in str(err) or isinstance(err, pickle.UnpicklingError):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f"it pickles {found.group(1)}" if found else "it holds objects other than tensors and plain values"
            raise CheckpointLoadError(
                f"{path}: refusing to unpickle this checkpoint: {what}. If you trust the file, load it yourself "
                "with torch.load(..., weights_only=False)."
            ) from err
        raise CheckpointLoadError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def _safe_globals() -> list:
    # The plain configuration dataclasses of lit-align (LoraOptions, SamplingConfig, ...) that objectives take as
    # arguments and Lightning stores in `hyper_parameters`; they hold values only, never code.
    found = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("lit_align") or module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
    return list(found.values())


def _test_write_delay() -> float:
    global _writes
    _writes += 1
    value = os.environ.get(WRITE_DELAY_ENV, "")
    if not value:
        return 0.0
    seconds, _, nth = value.partition(":")
    return float(seconds) if not nth or int(nth) == _writes else 0.0


class _SlowWriter:
    """File wrapper that pauses once, after the first bytes are on disk (test hook: a kill lands mid-write)."""

    def __init__(self, handle, delay: float) -> None:
        self.handle, self.delay, self.paused = handle, delay, False

    def write(self, data) -> int:
        written = self.handle.write(data)
        if not self.paused:
            self.paused = True
            self.handle.flush()
            time.sleep(self.delay)
        return written

    def flush(self) -> None:
        self.handle.flush()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by killed writers on this host (their process no longer exists)."""
    prefix = f"{_TEMP_PREFIX}{_host_tag()}-"
    for temp in directory.glob(f"{prefix}*{_TEMP_SUFFIX}"):
        pid = temp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            temp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform / file system
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
