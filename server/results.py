"""The results folder of a run: config.json, rounds.jsonl and results.json.

``rounds.jsonl`` gets one line per finished round and ``results.json`` is rewritten after every
evaluation, so a run that dies keeps every finished round and its best result so far.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_out_dir(kind: str, dataset: str) -> Path:
    """``results/<UTC time>-<kind>-<dataset>`` under the working directory."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{kind}-{dataset}"


def run_entry(method: str, setting: str, dataset: str, split: str, seed: int,
              **extra: Any) -> dict[str, Any]:
    """A fresh ``runs`` entry of ``results.json`` (ARCHITECTURE.md's schema), before training."""
    return {"method": method, "setting": setting, "dataset": dataset, "split": split,
            "seed": seed, "metrics": {}, "valid_metrics": {}, "best_round": None, "rounds": 0,
            "wall_s": 0.0, "bytes_up": 0, "bytes_down": 0, "peak_rss_mb": 0.0, **extra}


class ResultsWriter:
    """Writes one run's results folder.

    Parameters
    ----------
    out_dir : Path
        Created if missing.

    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _write_json(self, name: str, obj: Any) -> None:
        tmp = self.out_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
        os.replace(tmp, self.out_dir / name)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json``: the resolved config and the environment."""
        self._write_json("config.json", {"config": config, "env": environment()})

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one line to ``rounds.jsonl`` and flush it to disk."""
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
        """Write ``results.json`` in the schema of ARCHITECTURE.md."""
        self._write_json("results.json", {"config": config, "env": environment(), "runs": runs,
                                          "status": status})


def read_results(path: Path) -> dict[str, Any]:
    """Read a results.json (or the one inside a results folder)."""
    path = Path(path)
    return json.loads((path / "results.json" if path.is_dir() else path).read_text())
