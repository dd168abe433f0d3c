"""One run per results folder: an OS lock on ``<folder>/.florec.lock`` and claiming a folder.

:class:`FolderLock` holds an ``flock`` for the life of the run, so a second writer is refused and
a crashed run leaves nothing held. The processes a run starts (the ServerApp under ``flwr run``)
share their ancestor's lock. :func:`claim_folder` refuses a folder that already holds a run
unless it is resumed or overwritten.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path

from florec.recdata.errors import ConfigError

LOCK_NAME = ".florec.lock"
#: the files of a run that ``--overwrite`` removes (nothing else in the folder is touched)
RUN_FILES = ("config.json", "rounds.jsonl", "results.json", "checkpoint", "node-state",
             "model.npz")
#: resolved folder -> [file descriptor, holders in this process]
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


class FolderLock:
    """An exclusive lock on a results folder, held until :meth:`release` or the process ends.

    Within one process the lock is shared (re-entrant); a process whose ancestor holds it (the
    ServerApp under the ``florec sim`` that started it) shares it too. Any other process is
    refused with a one-line :class:`ConfigError`.

    Parameters
    ----------
    folder : Path
        The results folder; created if missing.

    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.held = False

    def acquire(self) -> FolderLock:
        """Take the lock (or share the holder's, see above); returns ``self``."""
        key = str(self.folder)
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                self.held = True
                return self
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if holder.isdigit() and _is_ancestor(int(holder)):
                    return self  # the run that started this process owns the folder
                raise ConfigError(
                    f"results folder {self.folder} is in use by another run (process "
                    f"{holder or '?'}); wait for it to end or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = [fd, 1]
            self.held = True
        return self

    def release(self) -> None:
        """Give the lock back (the file stays; only the OS lock is released)."""
        if not self.held:
            return
        self.held = False
        _release(str(self.folder))

    def __enter__(self) -> FolderLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release(key: str) -> None:
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _HELD[key]
            os.ftruncate(entry[0], 0)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


def _is_ancestor(pid: int) -> bool:
    import psutil

    try:
        return pid in {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        return False


def claim_folder(folder: Path, overwrite: bool = False, resume: bool = False) -> FolderLock:
    """Lock a results folder for a new run (or a resumed one); returns the held lock.

    A folder that holds a run's files is refused unless ``resume`` (continue it) or
    ``overwrite`` (its run files, :data:`RUN_FILES`, are removed first).

    Raises
    ------
    ConfigError
        Another run holds the folder, or it holds a run and neither flag is given.

    """
    lock = FolderLock(folder).acquire()
    try:
        found = [name for name in RUN_FILES if (lock.folder / name).exists()]
        if found and not resume:
            if not overwrite:
                raise ConfigError(
                    f"{lock.folder} already holds a run ({', '.join(found)}); pass --overwrite "
                    f"to replace it, --resume {lock.folder} to continue it, or choose another "
                    "--out")
            for name in found:
                path = lock.folder / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
