"""One ``fit`` at a time per run folder: a lock file in ``trainer.default_root_dir``.

Two runs writing into one folder would overwrite each other's ``last.ckpt`` and ``hf_model/`` without a word.
``RunLock`` holds an exclusive ``flock`` on ``<run folder>/.lit-align.lock`` for the whole ``fit`` and writes who
holds it (pid, host, start time) into the file, so that a second run refuses with one line naming the holder.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock left by a killed run is taken over
by the next one (with a log line). The holder recorded in the file matters only when it names another host: a
network file system may not share locks between hosts, so such a lock is respected until its holder removes it,
or the user does. Only global rank 0 locks; the other processes of a multi-process run join the run it locked.

A run writes outside its run folder too when told to (``checkpoint.dirpath``, ``export.dirpath``, the reward
stage's ``dirpath``), and two runs with different run folders can name the same one. ``lock_run_folders`` takes the
run folder's lock and one for every folder the run writes, by default or not: a lock file beside each
(``.lit-align-<name>.lock`` in its parent), since an export folder is replaced whole when written.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from lit_align.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked there
    fcntl = None

LOCK_NAME = ".lit-align.lock"


class RunFolderLockedError(UserError):
    """Another ``fit`` holds the run folder."""


class RunLock:
    """Exclusive lock on a run folder, held from ``acquire`` (or ``with``) to ``release``.

    Args:
        folder: The run folder (``trainer.default_root_dir``); created if missing.
        path: The lock file; by default ``<folder>/.lit-align.lock``.
    """

    def __init__(self, folder: str | os.PathLike, path: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise RunFolderLockedError(self._refusal(holder, "is using it")) from None
            # The previous holder may have removed the file between our open and our flock: that lock is on a
            # deleted file, so start again on the one the path names now.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise RunFolderLockedError(f"could not lock the run folder {self.folder}: {self.path} keeps changing")
        previous = _read(fd)
        if previous and previous.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            raise RunFolderLockedError(self._refusal(previous, "may be using it (another host: cannot check)"))
        if previous:
            rank_zero_info(f"run folder {self.folder}: taking over the lock of a run that ended without releasing "
                           f"it ({_describe(previous)})")
        _write(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                self.path.unlink()  # while still locked: nobody can hold this file after us
        finally:
            os.close(fd)  # drops the flock

    def _refusal(self, holder: dict, doing: str) -> str:
        return (f"the run folder {self.folder} is locked: {_describe(holder)} {doing}. Wait for that run to end, "
                f"or give this one another --trainer.default_root_dir; if that run is gone, delete {self.path}")


def output_folders(trainer, module=None) -> list[Path]:
    """Every folder a fit writes besides the run folder: checkpoints, export, reward stage (defaults included)."""
    root = Path(trainer.default_root_dir)
    folders = []
    for callback in trainer.callbacks:
        name = type(callback).__name__
        if name == "AlignCheckpoint" or hasattr(callback, "resume_changes"):
            folders.append(Path(callback.dirpath) if callback.dirpath else root / "checkpoints")
        elif name == "HFExport" and getattr(callback, "enabled", False):
            folders.append(Path(callback.dirpath) if callback.dirpath else root / "hf_model")
    stage = getattr(module, "reward_stage", None)
    if stage is not None and getattr(module, "reward_model", None) is None:
        folders.append(Path(stage.dirpath) if stage.dirpath else root / "reward_model")
    return folders


@contextlib.contextmanager
def lock_run_folders(trainer, module=None):
    """Hold the run folder's lock and one beside every folder the fit writes (``output_folders``) for the block."""
    locks = [RunLock(trainer.default_root_dir)]
    seen = set()
    for folder in output_folders(trainer, module):
        key = os.path.abspath(folder)
        if key not in seen:
            seen.add(key)
            locks.append(RunLock(folder, folder.parent / f".lit-align-{folder.name}.lock"))
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield locks


def _describe(holder: dict) -> str:
    if not holder:
        return "another lit-align run"
    return f"lit-align pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)
