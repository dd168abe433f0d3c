"""The results folder of a run: config.json, rounds.jsonl and results.json.

``rounds.jsonl`` gets one line per finished round and ``results.json`` is rewritten after every
evaluation, so a run that dies keeps every finished round and its best result so far.

One run owns a folder at a time (:class:`florec.server.folder_lock.FolderLock`, held by the
writer). Memory is measured per run (:class:`florec.server.rss_monitor.RssMonitor`): the peak
resident memory of the process while the run lasted and how far it grew above its level at the
start.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

from florec.server.folder_lock import FolderLock
from florec.server.rss_monitor import RssMonitor

PACKAGES = ("flwr", "torch", "numpy", "scipy", "ray")


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
        self._write_text(name, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")

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
