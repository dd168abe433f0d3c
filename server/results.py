"""The results folder of a run: config.json, rounds.jsonl and results.json.

``rounds.jsonl`` gets one line per finished round and ``results.json`` is rewritten after every
evaluation, so a run that dies keeps every finished round and its best result so far.

One run owns a folder at a time: :class:`FolderLock` holds an OS lock (``flock``) on
``<folder>/.florec.lock`` for the life of the run, so a second writer is refused and a crashed
run leaves nothing held. The processes a run starts (the ServerApp under ``flwr run``) share
their ancestor's lock. Memory is measured per run (:class:`RssMonitor`): the peak resident
memory of the process while the run lasted and how far it grew above its level at the start.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError

PACKAGES = ("flwr", "torch", "numpy", "scipy", "ray")
LOCK_NAME = ".florec.lock"
#: the files of a run that ``--overwrite`` removes (nothing else in the folder is touched)
RUN_FILES = ("config.json", "rounds.jsonl", "results.json", "checkpoint", "node-state",
             "model.npz")
#: resolved folder -> [file descriptor, holders in this process]
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


def environment() -> dict[str, Any]:
    """Library versions, Python, platform and the code version (git commit where known)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "commit": commit or None,
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}


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


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RssMonitor:
    """Resident memory of this process while one run lasts, sampled in a thread.

    ``rss_peak_mb`` is the largest resident set seen during the run (samples every
    ``every_s`` seconds and at each :meth:`fields` call); ``rss_growth_mb`` is that peak minus
    the resident set when the run started, i.e. what the run added on top of what the process
    already held. Neither is the process's lifetime high-water mark (``ru_maxrss``), which
    earlier runs in the same process would inflate.
    """

    def __init__(self, every_s: float = 0.05) -> None:
        self.start_mb = _rss_mb()
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True,
                                        name="florec-rss")
        self._thread.start()

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def fields(self) -> dict[str, float]:
        """``{"rss_peak_mb", "rss_growth_mb"}`` of the run so far."""
        self.peak_mb = max(self.peak_mb, _rss_mb())
        return {"rss_peak_mb": round(self.peak_mb, 1),
                "rss_growth_mb": round(self.peak_mb - self.start_mb, 1)}

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()

    def __enter__(self) -> RssMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_out_dir(kind: str, dataset: str) -> Path:
    """``results/<UTC time>-<kind>-<dataset>`` under the working directory."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{kind}-{dataset}"


def run_entry(method: str, setting: str, dataset: str, split: str, seed: int,
              **extra: Any) -> dict[str, Any]:
    """A fresh ``runs`` entry of ``results.json`` (ARCHITECTURE.md's schema), before training."""
    return {"method": method, "setting": setting, "dataset": dataset, "split": split,
            "seed": seed, "metrics": {}, "valid_metrics": {}, "best_round": None, "rounds": 0,
            "wall_s": 0.0, "bytes_up": 0, "bytes_down": 0, "rss_peak_mb": 0.0,
            "rss_growth_mb": 0.0, **extra}


class ResultsWriter:
    """Writes one run's results folder, which it locks while it lives.

    It stamps every ``rounds.jsonl`` line and every run of ``results.json`` with the run's
    memory (:class:`RssMonitor`, started with the writer). The lock and the monitor end with
    :meth:`close`, a final :meth:`write_results`, or when the writer is garbage-collected.

    Parameters
    ----------
    out_dir : Path
        Created if missing.

    Raises
    ------
    ConfigError
        Another run holds the folder (see :class:`FolderLock`).

    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.lock = FolderLock(self.out_dir).acquire()
        self.memory = RssMonitor()
        self._finalizer = weakref.finalize(self, _close, self.lock, self.memory)

    def close(self) -> None:
        """Release the folder and stop measuring memory."""
        self._finalizer()

    def _write_json(self, name: str, obj: Any) -> None:
        tmp = self.out_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
        os.replace(tmp, self.out_dir / name)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json``: the resolved config and the environment."""
        self._write_json("config.json", {"config": config, "env": environment()})

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one line to ``rounds.jsonl`` (with the run's memory so far), flushed to disk."""
        row.update(self.memory.fields())
        with (self.out_dir / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def reset_rounds(self) -> None:
        """Start ``rounds.jsonl`` empty (a fresh run in an existing folder)."""
        (self.out_dir / "rounds.jsonl").unlink(missing_ok=True)

    def truncate_rounds(self, last_round: int) -> int:
        """Keep only the lines of rounds ``<= last_round`` (a resume); returns how many stay."""
        path = self.out_dir / "rounds.jsonl"
        if not path.exists():
            return 0
        kept = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line)["round"]) <= last_round:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        self._write_text("rounds.jsonl", "".join(x + "\n" for x in kept))
        return len(kept)

    def _write_text(self, name: str, text: str) -> None:
        tmp = self.out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.out_dir / name)

    def write_results(self, config: dict[str, Any], runs: list[dict[str, Any]],
                      status: str = "finished") -> None:
        """Write ``results.json`` in the schema of ARCHITECTURE.md; ``finished`` closes the writer.

        Each run dict gets the run's memory so far (``rss_peak_mb``, ``rss_growth_mb``).
        """
        for run in runs:
            run.update(self.memory.fields())
        if status != "running":
            self.memory.stop()
        self._write_json("results.json", {"config": config, "env": environment(), "runs": runs,
                                          "status": status})


def _close(lock: FolderLock, memory: RssMonitor) -> None:
    memory.stop()
    lock.release()


def read_results(path: Path) -> dict[str, Any]:
    """Read a results.json (or the one inside a results folder)."""
    path = Path(path)
    return json.loads((path / "results.json" if path.is_dir() else path).read_text())
