"""Files and folders that appear whole or not at all: the one way lit-align writes what a reader may open.

``atomic_file(path)`` hands out a handle on a temporary file in ``path``'s own directory (the same file system, so
the final move is a rename). On success the file is flushed and fsynced, renamed over ``path`` with ``os.replace``
(atomic on POSIX) and the directory is fsynced, so the rename itself survives a power cut. A process killed at
any moment leaves either the previous ``path`` or the new one, never a truncated file; the temporary it leaves
behind carries this host's tag and the writer's pid, and the next write of the same kind on this host removes it
once that process no longer exists (a temporary of a live writer, or of another host sharing the folder over a
network file system, is never touched).

``atomic_folder(target)`` does the same for a whole folder: an empty temporary folder to write into, then the
previous ``target`` moved aside, the new one renamed into place, the old one deleted. Killed between the two
renames, a writer leaves the previous folder under a hidden ``.old`` name, which the next write puts back.

Test hook: ``WRITE_DELAY_ENV`` set to ``SECONDS[:N[:PATTERN]]`` pauses in the middle of writing a file whose name
matches ``PATTERN`` (a glob, ``*.ckpt`` by default): every such write, or only this process's N-th, so a test can
kill the process while the file is half-written.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Iterator

#: Test-only: ``SECONDS[:N[:PATTERN]]`` (see the module docstring).
WRITE_DELAY_ENV = "LIT_ALIGN_TEST_CHECKPOINT_WRITE_DELAY"
_DEFAULT_DELAY_PATTERN = "*.ckpt"
_writes: Counter = Counter()  # this process's atomic writes per delay pattern
_TEMP_SUFFIX = ".tmp"
_PARTIAL, _OLD = ".partial-", ".old-"


def host_tag() -> str:
    """A short, file-name-safe tag of this host (temporary names carry it so stale ones are recognised)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory, where the platform and file system support it (silently skipped otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported for directories on some file systems
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", prefix: str | None = None) -> Iterator[IO]:
    """Yield a handle to write ``path``'s new content into; it replaces ``path`` whole once the block succeeds.

    Args:
        path: The file to write; its parent folders are created.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
        prefix: The start of the temporary's name, by default ``.<name>.write-``; give one when the target's name
            must not appear in it (Lightning's ``--ckpt_path last`` takes any file whose name holds ``last``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix if prefix is not None else f".{path.name}.write-"
    _remove_dead_writers(path.parent, prefix, _TEMP_SUFFIX, lambda leftover: leftover.unlink(missing_ok=True))
    temp = path.parent / f"{prefix}{_writer_tag()}{_TEMP_SUFFIX}"
    delay = _test_write_delay(path.name)
    try:
        with open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield _SlowWriter(handle, delay) if delay > 0 else handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself survives a power cut only once the directory is synced


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_file``."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_file``."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to write into; on success it replaces ``target`` whole (see the module docstring)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _tidy_folder(target)
    tag = _writer_tag()
    temp = target.parent / f".{target.name}{_PARTIAL}{tag}"
    old = target.parent / f".{target.name}{_OLD}{tag}"
    temp.mkdir()
    try:
        yield temp
        for written in temp.rglob("*"):
            if written.is_file():
                fsync_path(written)
        fsync_path(temp)
        if target.exists():
            os.rename(target, old)
        os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)


def _writer_tag() -> str:
    """``<host>-<pid>-<random>``: whose temporary this is, and unique among this process's writes."""
    return f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_dead_writers(directory: Path, prefix: str, suffix: str, remove) -> None:
    """Call ``remove`` on every ``<prefix><host>-<pid>-...<suffix>`` in ``directory`` left by a writer on this
    host whose process no longer exists."""
    mine = f"{prefix}{host_tag()}-"
    for leftover in directory.glob(f"{_glob_escape(mine)}*{suffix}"):
        pid = leftover.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            remove(leftover)


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _tidy_folder(target: Path) -> None:
    """Remove temporaries of dead writers of ``target``; put back a previous folder one left moved aside."""
    def restore_or_remove(leftover: Path) -> None:
        if _OLD in leftover.name and not target.exists():
            os.rename(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)

    for mark in (_PARTIAL, _OLD):
        _remove_dead_writers(target.parent, f".{target.name}{mark}", "", restore_or_remove)


def _test_write_delay(name: str) -> float:
    value = os.environ.get(WRITE_DELAY_ENV, "")
    seconds, _, rest = value.partition(":")
    nth, _, pattern = rest.partition(":")
    pattern = pattern or _DEFAULT_DELAY_PATTERN
    if not fnmatch.fnmatch(name, pattern):
        return 0.0
    _writes[pattern] += 1
    if not seconds:
        return 0.0
    return float(seconds) if not nth or int(nth) == _writes[pattern] else 0.0


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
