"""Checkpoint files that are never half-written, and that load without running pickled code.

``AtomicCheckpointIO`` (the CLI installs it by default) streams the checkpoint into a temporary file in the
target's own directory, fsyncs it, and renames it over the target with ``os.replace``, which is atomic on POSIX
file systems (``lit_align.runs.atomic``, the one atomic writer of lit-align): a process killed at any moment leaves
either the previous ``last.ckpt`` or the new one, never a truncated file. Lightning's own ``TorchCheckpointIO``
serialises the whole checkpoint into memory first and moves it from the system temporary directory, which is a copy
(not a rename) when that directory is on another file system, and it never fsyncs.

Loading is ``torch.load(..., weights_only=True)``: tensors, containers and primitive values only, so a checkpoint
from someone else cannot execute code. lit-align's own configuration dataclasses are allow-listed, under their
module paths of today and of earlier versions (``lit_align._moved``). A file that
pickles anything else is refused, and so is an unreadable one; neither is ever retried with unpickling.

Every checkpoint written here carries a checksum under ``CHECKSUM_KEY``: a digest of every tensor's dtype, shape
and bytes and of every other value in the payload, in order, recomputed on load. Bytes changed on disk (a bad
copy, a flipped bit, anything written into the file) that still unpickle into finite tensors are caught there and
refused. The digest is xxh3-128 when the ``xxhash`` package is installed and SHA-256 otherwise, paid once per save
and once per load (512 MiB of tensors: 0.2-0.3 s with xxh3, 1.4-2.4 s with SHA-256 on one shared CPU core); the
algorithm is stored with the digest.
Sharded (distributed) checkpoints are written by the strategy, not here, and carry no checksum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from lit_align._moved import old_names
from lit_align.errors import UserError
from lit_align.runs.atomic import WRITE_DELAY_ENV, atomic_file  # noqa: F401  (the tests' write-delay hook)

try:  # optional: a digest about ten times faster than SHA-256
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None

# Temporary names must not contain "last": Lightning's `--ckpt_path last` picks the newest file whose name does.
_TEMP_PREFIX = ".ckpt-write-"


#: The checkpoint key holding ``{"algorithm": ..., "digest": ...}`` of the rest of the payload.
CHECKSUM_KEY = "lit_align_checksum"


class CheckpointLoadError(UserError, RuntimeError):
    """A checkpoint file could not be read, or was refused; the message names it and says why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, fsynced, checksummed writes and verified ``weights_only`` loading.

    ``on_load``, when set, is called with every checkpoint read and its path before the checkpoint is returned:
    ``AlignCheckpoint`` checks a resume's run manifest there, before Lightning restores any state from it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_load: Callable[[dict[str, Any], str], None] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(with_checksum(checkpoint), path)

    def load_checkpoint(self, path, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        checkpoint = load_checkpoint_file(path, map_location, weights_only=weights_only is not False)
        if self.on_load is not None:
            self.on_load(checkpoint, str(path))
        return checkpoint


def watch_loads(trainer, check: Callable[[dict[str, Any], str], None] | None) -> None:
    """Have ``check(checkpoint, path)`` run on every checkpoint file the trainer reads, before Lightning restores
    anything from it (``None``: stop). Only ``AtomicCheckpointIO`` (the CLI's) reads through such a hook; the
    strategies that read checkpoints themselves (FSDP2's sharded folders) leave it to ``on_load_checkpoint``."""
    io = getattr(trainer.strategy, "checkpoint_io", None)
    if isinstance(io, AtomicCheckpointIO):
        io.on_load = check


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through ``lit_align.runs.atomic.atomic_file`` (temporary, fsync, rename)."""
    with atomic_file(path, "wb", prefix=_TEMP_PREFIX) as handle:
        torch.save(obj, handle)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """Read a checkpoint with ``weights_only`` unpickling (lit-align's config dataclasses allowed) and verify its
    checksum.

    Raises ``CheckpointLoadError`` naming the file when it pickles anything other than tensors and plain values,
    cannot be read (truncated, not a checkpoint), or its content no longer matches its checksum.
    """
    try:
        if not weights_only:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise _load_error(shown_path(path), err) from err
    if isinstance(checkpoint, dict):
        verify_checksum(checkpoint, shown_path(path))
    return checkpoint


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies inside it (Lightning makes ``last`` absolute)."""
    path = os.fspath(path)
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


def with_checksum(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` plus its checksum under ``CHECKSUM_KEY`` (a new dict; the tensors are not copied)."""
    algorithm = "xxh3_128" if xxhash is not None else "sha256"
    body = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: {"algorithm": algorithm, "digest": payload_digest(body, algorithm)}}


def verify_checksum(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Remove the checksum from a loaded ``checkpoint`` and raise ``CheckpointLoadError`` if it does not match.

    A checkpoint without one (written by another ``CheckpointIO`` or an older lit-align) passes unchecked.
    """
    stored = checkpoint.pop(CHECKSUM_KEY, None)
    if stored is None:
        return
    algorithm = stored.get("algorithm") if isinstance(stored, dict) else None
    if algorithm == "xxh3_128" and xxhash is None:
        rank_zero_warn(f"{path}: not verifying its xxh3 checksum: install xxhash to check it")
        return
    if algorithm not in ("xxh3_128", "sha256") or payload_digest(checkpoint, algorithm) != stored.get("digest"):
        raise CheckpointLoadError(
            f"{path} is corrupt (checksum mismatch): its content changed after it was written (a damaged copy or "
            f"disk, or something wrote into the file); resume from another checkpoint{_others(path)}"
        )


def payload_digest(obj: Any, algorithm: str = "sha256") -> str:
    """Hex digest of a checkpoint payload: tensors by dtype, shape and bytes, other values by kind and value."""
    digest = xxhash.xxh3_128() if algorithm == "xxh3_128" else hashlib.new(algorithm)
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    # Kinds, not type names, tag each value: unpickling may rebuild a container as a sibling type (an
    # AttributeDict as a dict), and a checksum must only change when a value does.
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(digest, value)
    elif isinstance(obj, (set, frozenset)):
        digest.update(f"S{len(obj)}".encode())
        for item in sorted(payload_digest(value) for value in obj):  # set order changes between processes
            digest.update(item.encode())
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        digest.update(f"V{type(obj).__name__}:{obj!r}".encode())
    elif dataclasses.is_dataclass(obj):
        digest.update(f"C{type(obj).__qualname__}".encode())
        _feed(digest, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    elif hasattr(obj, "__dict__"):
        digest.update(f"O{type(obj).__qualname__}".encode())
        _feed(digest, vars(obj))
    else:  # nothing stable to read from it; its kind still counts
        digest.update(f"O{type(obj).__qualname__}".encode())


def _load_error(path: str | os.PathLike, err: Exception) -> CheckpointLoadError:
    """One line naming the file: a refused pickled object, or an unreadable file. Never advice to unpickle it."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return CheckpointLoadError(
            f"{path}: refusing to unpickle this checkpoint: it pickles {found.group(1)}, an arbitrary Python object "
            "that could run code when loaded. lit-align reads only tensors and plain values: use a checkpoint that "
            "lit-align wrote"
        )
    reason = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    reason = reason.strip().split("\n", 1)[0].split(". ", 1)[0].strip().rstrip(".")
    reason = type(err).__name__ if not reason or "weights_only" in reason or len(reason) > 200 \
        else f"{type(err).__name__}: {reason}"
    return CheckpointLoadError(
        f"{path} is corrupt or not a checkpoint (unreadable: {reason}); resume from another checkpoint{_others(path)}"
    )


def _others(path: str | os.PathLike) -> str:
    """`` (others there: a.ckpt, b.ckpt)`` for the checkpoints next to ``path``, or nothing."""
    path = Path(path)
    try:
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
    except OSError:
        return ""
    return f" (others there: {', '.join(others)})" if others else ""


def _safe_globals() -> list:
    # The plain configuration dataclasses of lit-align (SamplingConfig, ...) that objectives take as
    # arguments and Lightning stores in `hyper_parameters`; they hold values only, never code. Each is allowed
    # under its path now and under the paths of earlier versions (lit_align._moved), which older checkpoints name.
    found = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("lit_align") or module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
                for old in old_names(name):
                    found[f"{old}.{value.__qualname__}"] = (value, f"{old}.{value.__qualname__}")
    return list(found.values())
