"""The state the round loop carries from round to round: a fresh start, a resume, a checkpoint.

See :mod:`florec.server.checkpoint` for the files; this module ties them to the nodes (which
snapshot and restore their own stores) and to the results folder (``rounds.jsonl`` is cut back
to the checkpoint's round on a resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import from_record, to_record
from florec.recdata.runconfig import RunConfig
from florec.server.checkpoint import (
    ServerState,
    checkpoint_dir,
    clear_checkpoints,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from florec.server.loop import restore_nodes, snapshot_nodes
from florec.server.results import ResultsWriter
from florec.strategies.base import RecStrategy


@dataclass
class Progress:
    """What the round loop carries from round to round (and a checkpoint saves).

    Attributes
    ----------
    arrays : ArrayRecord
        The current global state.
    run : dict
        The run's ``results.json`` entry so far (best round, its metrics and coverage, ...).
    best_score, since_best : float, int
        The best round's selection metric and the evaluations since it (``patience``).
    first_round : int
        The next round to train (1, or the checkpoint's round + 1).
    wall_before : float
        Wall-clock seconds spent before a resume.
    pending : dict, optional
        With ``fused-evaluate``: the row of the last round, trained and due for evaluation,
        whose evaluation rides on the next round's train messages (never in a checkpoint:
        checkpoint rounds are evaluated at once, :func:`florec.server.fused.defers`).
    pending_unresponsive : set of int
        The nodes that missed a reply of the ``pending`` round: a separate run would not
        evaluate them, so their fused evaluation is discarded.

    """

    arrays: ArrayRecord
    run: dict[str, Any]
    best_score: float = -np.inf
    since_best: int = 0
    first_round: int = 1
    wall_before: float = 0.0
    pending: dict[str, Any] | None = None
    pending_unresponsive: set[int] = field(default_factory=set)


def start_or_resume(grid: Grid, cfg: RunConfig, out_dir: Path, config: dict[str, Any],
                    strategy: RecStrategy, arrays: ArrayRecord, writer: ResultsWriter,
                    run: dict[str, Any]) -> Progress:
    """A fresh start, or with ``resume`` the state of the last checkpoint of ``out_dir``.

    A fresh start begins from ``arrays`` and the empty entry ``run`` (old rounds and
    checkpoints are removed).

    Raises
    ------
    ConfigError
        If ``resume`` finds no checkpoint or one of another config.
    DataError
        If the checkpoint or a node's snapshot is unreadable.

    """
    if not cfg.resume:
        writer.reset_rounds()
        clear_checkpoints(out_dir)
        return Progress(arrays, run)
    saved = load_checkpoint(out_dir, config)
    restore_nodes(grid, str(checkpoint_dir(out_dir)), saved.round, cfg.round_timeout_s)
    strategy.load_state_arrays(saved.strategy)
    set_rng_states(saved.rng)
    kept = writer.truncate_rounds(saved.round)
    log(INFO, "resuming %s after round %d (%d lines of rounds.jsonl kept)", out_dir,
        saved.round, kept)
    return Progress(to_record(saved.arrays), saved.run, saved.best_score, saved.since_best,
                    saved.round + 1, float(saved.run.get("wall_s", 0.0)))


def save_round_checkpoint(grid: Grid, cfg: RunConfig, out_dir: Path, config: dict[str, Any],
                          strategy: RecStrategy, rnd: int, state: Progress) -> bool:
    """Snapshot every node's store, then save the server's state; skipped if a node fails.

    Returns
    -------
    bool
        Whether the checkpoint was written (the previous one stays otherwise).

    """
    failed = snapshot_nodes(grid, str(checkpoint_dir(out_dir)), rnd, cfg.round_timeout_s)
    if failed:
        log(WARNING, "round %d: node(s) %s did not snapshot their store: no checkpoint this "
            "round (the previous one stays)", rnd, ", ".join(map(str, failed)))
        return False
    save_checkpoint(out_dir, ServerState(
        round=rnd, arrays=from_record(state.arrays), strategy=strategy.state_arrays(),
        run=dict(state.run), best_score=state.best_score, since_best=state.since_best,
        config=config, rng=rng_states()))
    log(INFO, "round %d: checkpoint saved in %s", rnd, checkpoint_dir(out_dir))
    return True
