"""Checkpoints of a federated run under its out-dir, and what a resume needs from them.

Layout (``<out-dir>/checkpoint/``)::

    LATEST                      {"round": r, "dir": "round-<r>"}, replaced atomically last
    round-<r>/state.json        round, run entry so far, best score, config, RNG states
    round-<r>/global.npz        the global state (the strategy's ArrayRecord)
    round-<r>/strategy.npz      strategy state that outlives a round (e.g. GF-CF's filter)
    round-<r>/rng.npz           numpy's and torch's global generator states
    nodes/round-<r>/part-<p>.npz  each node's store (written by the nodes, see client.app)

A checkpoint folder is written under a temporary name and renamed, then ``LATEST`` is replaced,
then older checkpoints are removed; a run killed at any point leaves the previous checkpoint
whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.recdata.errors import ConfigError, DataError

#: keys a resume may change; any other difference is refused
RESUMABLE_KEYS = ("resume", "out-dir", "num-rounds")


@dataclass
class ServerState:
    """Everything the server needs to continue a run after round ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    run: dict[str, Any]
    best_score: float
    since_best: int
    config: dict[str, Any]
    rng: dict[str, Any]


def checkpoint_dir(out_dir: Path) -> Path:
    """``<out-dir>/checkpoint``."""
    return Path(out_dir) / "checkpoint"


def rng_states() -> dict[str, Any]:
    """The global generators of Python, numpy and torch."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [version, list(state), gauss], "numpy-pos": int(np_state[2]),
            "numpy-gauss": [int(np_state[3]), float(np_state[4])],
            "numpy-keys": np.asarray(np_state[1]), "torch": torch.get_rng_state().numpy()}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    has_gauss, cached = states["numpy-gauss"]
    np.random.set_state(("MT19937", np.asarray(states["numpy-keys"], dtype=np.uint32),
                         int(states["numpy-pos"]), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.from_numpy(np.asarray(states["torch"], dtype=np.uint8).copy()))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        fh.flush()
        os.fsync(fh.fileno())


def _loadz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_checkpoint(out_dir: Path, state: ServerState) -> Path:
    """Write the server's part of a checkpoint atomically and point ``LATEST`` at it."""
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"round-{state.round:06d}"
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    rng = dict(state.rng)
    rng_arrays = {"numpy-keys": rng.pop("numpy-keys"), "torch": rng.pop("torch")}
    meta = {"round": state.round, "run": state.run, "best_score": state.best_score,
            "since_best": state.since_best, "config": state.config, "rng": rng}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=float))
    _savez(tmp / "global.npz", state.arrays)
    _savez(tmp / "strategy.npz", state.strategy)
    _savez(tmp / "rng.npz", rng_arrays)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".LATEST.{uuid.uuid4().hex[:8]}"
    latest_tmp.write_text(json.dumps({"round": state.round, "dir": name}) + "\n")
    os.replace(latest_tmp, root / "LATEST")
    prune(out_dir, state.round)
    return final


def prune(out_dir: Path, keep_round: int) -> None:
    """Remove checkpoints (server and node parts) other than round ``keep_round``."""
    root = checkpoint_dir(out_dir)
    keep = f"round-{keep_round:06d}"
    for folder in [*root.glob("round-*"), *(root / "nodes").glob("round-*"),
                   *root.glob(".tmp-*")]:
        if folder.name != keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def clear_checkpoints(out_dir: Path) -> None:
    """Remove every checkpoint of ``out_dir`` (a fresh run starts without any)."""
    shutil.rmtree(checkpoint_dir(out_dir), ignore_errors=True)


def config_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first key (outside :data:`RESUMABLE_KEYS`) whose value differs, with both values."""
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_KEYS:
            continue
        if saved.get(key) != current.get(key):
            return (f"config key '{key}' differs from the checkpoint ({saved.get(key)!r} there, "
                    f"{current.get(key)!r} now)")
    return None


def load_checkpoint(out_dir: Path, config: dict[str, Any]) -> ServerState:
    """The last checkpoint of ``out_dir``, checked against the current ``config``.

    Raises
    ------
    ConfigError
        If there is no checkpoint, or the config differs in a key other than resume, out-dir
        and num-rounds.
    DataError
        If the checkpoint's files are unreadable.

    """
    root = checkpoint_dir(out_dir)
    latest = root / "LATEST"
    if not latest.is_file():
        raise ConfigError(f"resume=true but {root} holds no checkpoint; start the run without "
                          "resume (and with checkpoint-every=N to make one)")
    try:
        pointer = json.loads(latest.read_text())
        folder = root / pointer["dir"]
        meta = json.loads((folder / "state.json").read_text())
        arrays, strategy = _loadz(folder / "global.npz"), _loadz(folder / "strategy.npz")
        rng = meta["rng"] | _loadz(folder / "rng.npz")
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"checkpoint in {root} is unreadable ({err}); remove it and start the "
                        "run without resume") from None
    problem = config_difference(meta["config"], config)
    if problem is not None:
        raise ConfigError(f"cannot resume {out_dir}: {problem}; resume with the same config "
                          "(only resume, out-dir and num-rounds may change) or use a new out-dir")
    return ServerState(round=int(meta["round"]), arrays=arrays, strategy=strategy,
                       run=meta["run"], best_score=float(meta["best_score"]),
                       since_best=int(meta["since_best"]), config=meta["config"], rng=rng)
