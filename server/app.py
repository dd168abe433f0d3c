"""The ServerApp: strategy from the run config, rounds, evaluation, results files."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from florec.models.metrics import split_metrics
from florec.models.registry import SEQUENTIAL_MODELS
from florec.recdata.cohort import cohort_log
from florec.recdata.errors import FloRecError
from florec.recdata.partition import node_clients
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.store import get_split
from florec.server.checkpoint import (
    ServerState,
    checkpoint_dir,
    clear_checkpoints,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from florec.server.loop import (
    learn_partitions,
    restore_nodes,
    snapshot_nodes,
    stream_replies,
    wait_for_nodes,
)
from florec.server.results import ResultsWriter, default_out_dir, peak_rss_mb, run_entry
from florec.strategies.base import RecStrategy
from florec.strategies.payload import from_record, to_record
from florec.strategies.registry import attach_cohorts, build_strategy

app = ServerApp()


def method_name(cfg: RunConfig) -> str:
    """The algorithm's display name, e.g. ``fedavg-mf-sparse`` or ``fedcia-mf-factored-r128``."""
    name = f"{cfg.algorithm}-{'mix' if cfg.model_mix else cfg.model}"
    if cfg.model in SEQUENTIAL_MODELS:
        return f"{cfg.algorithm}-{'oracle4rec-' if cfg.oracle else ''}{cfg.model}"
    if cfg.algorithm == "fedavg" and cfg.mf_loss != "bpr":
        name += f"-{cfg.mf_loss}" + ("-approx" if cfg.mf_loss == "fs-pair" else "")
    if cfg.algorithm == "fedavg" and cfg.aggregation == "sparse":
        name += "-sparse"
    elif cfg.algorithm == "fedcia" and cfg.model == "gfcf":
        name += f"-{cfg.gfcf_mode}"
    elif cfg.algorithm == "fedcia" and cfg.fedcia_comm == "factored":
        name += f"-factored-r{cfg.fedcia_rank or 2 * cfg.dim}"
    return name


def train_round(grid: Grid, strategy: RecStrategy, rnd: int, arrays: ArrayRecord,
                timeout_s: float, min_fit_fraction: float = 0.0
                ) -> tuple[ArrayRecord, dict[str, Any]]:
    """One training round (and the strategy's second phase, if any); returns the new state.

    If fewer than ``min_fit_fraction`` of the sampled nodes reply usably, the round's update is
    discarded (the global state stays as it was) and the run goes on.
    """
    strategy.start_round()
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    new_arrays, train_metrics = strategy.aggregate_train(
        rnd, stream_replies(grid, messages, timeout_s, strategy.unresponsive))
    replied = int((train_metrics or {}).get("num-replies", 0))
    if messages and replied < min_fit_fraction * len(messages):
        log(WARNING, "round %d: %d of %d nodes replied, below min-fit-fraction=%.2f: the "
            "round's update is discarded", rnd, replied, len(messages), min_fit_fraction)
        strategy.discard_round()
        new_arrays = None
    if new_arrays is None:
        log(WARNING, "round %d: no usable update; the global state is unchanged", rnd)
        new_arrays = arrays
    row: dict[str, Any] = {"round": rnd, "train": dict(train_metrics or {})}
    align = list(strategy.configure_align(rnd, grid))
    if align:
        row["align"] = dict(strategy.aggregate_align(
            rnd, stream_replies(grid, align, timeout_s, strategy.unresponsive)))
    return new_arrays, row


def setup_phase(grid: Grid, strategy: RecStrategy, arrays: ArrayRecord, timeout_s: float
                ) -> ArrayRecord:
    """Run the strategy's setup stages (if any) before round 1; returns the initial state."""
    for stage in range(100):
        messages = list(strategy.configure_setup(stage, arrays, grid))
        if not messages:
            return arrays
        arrays = strategy.aggregate_setup(
            stage, arrays, stream_replies(grid, messages, timeout_s, strategy.unresponsive))
    raise RuntimeError("strategy setup did not finish in 100 stages")


@dataclass
class Progress:
    """What the round loop carries from round to round (and a checkpoint saves)."""

    arrays: ArrayRecord
    run: dict[str, Any]
    best_score: float = -np.inf
    since_best: int = 0
    first_round: int = 1
    wall_before: float = 0.0


def start_or_resume(grid: Grid, cfg: RunConfig, out_dir: Path, config: dict[str, Any],
                    strategy: RecStrategy, arrays: ArrayRecord, writer: ResultsWriter,
                    num_nodes: int) -> Progress:
    """A fresh start (old rounds and checkpoints removed) or the state of the last checkpoint."""
    if not cfg.resume:
        writer.reset_rounds()
        clear_checkpoints(out_dir)
        return Progress(arrays, run_entry(method_name(cfg), "federated", cfg.dataset, cfg.split,
                                          cfg.seed, num_nodes=num_nodes))
    saved = load_checkpoint(out_dir, config)
    restore_nodes(grid, str(checkpoint_dir(out_dir)), saved.round, cfg.round_timeout_s)
    strategy.load_state_arrays(saved.strategy)
    set_rng_states(saved.rng)
    kept = writer.truncate_rounds(saved.round)
    log(INFO, "resuming %s after round %d (%d lines of rounds.jsonl kept)", out_dir,
        saved.round, kept)
    return Progress(to_record(saved.arrays), saved.run, saved.best_score, saved.since_best,
                    saved.round + 1, float(saved.run.get("wall_s", 0.0)))


def checkpoint(grid: Grid, cfg: RunConfig, out_dir: Path, config: dict[str, Any],
               strategy: RecStrategy, rnd: int, state: Progress) -> None:
    """Snapshot every node's store, then save the server's state; skipped if a node fails."""
    failed = snapshot_nodes(grid, str(checkpoint_dir(out_dir)), rnd, cfg.round_timeout_s)
    if failed:
        log(WARNING, "round %d: node(s) %s did not snapshot their store: no checkpoint this "
            "round (the previous one stays)", rnd, ", ".join(map(str, failed)))
        return
    save_checkpoint(out_dir, ServerState(
        round=rnd, arrays=from_record(state.arrays), strategy=strategy.state_arrays(),
        run=dict(state.run), best_score=state.best_score, since_best=state.since_best,
        config=config, rng=rng_states()))
    log(INFO, "round %d: checkpoint saved in %s", rnd, checkpoint_dir(out_dir))


def run_federated(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate one federated run; returns its entry of ``results.json``.

    With ``checkpoint-every=N`` the run is checkpointed every N rounds; ``resume=true``
    continues the last checkpoint of ``out_dir`` (see :mod:`florec.server.checkpoint`).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    writer = ResultsWriter(out_dir)
    config = cfg.to_flower() | {"out-dir": str(out_dir)}
    if cfg.resume:
        load_checkpoint(out_dir, config)  # fail early: no checkpoint or another config
    writer.write_config(config)
    split, split_path = get_split(
        cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating, cfg.synthetic_params()
    )
    buckets = node_clients(split.n_users, num_nodes=cfg.num_nodes,
                           users_per_node=cfg.users_per_node,
                           clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                           seed=cfg.split_seed)
    wait_for_nodes(grid, len(buckets), cfg.node_wait_s)
    log(INFO, "%d nodes registered; split in %s", len(buckets), split_path)
    strategy, arrays = build_strategy(cfg, split.n_items)
    if attach_cohorts(strategy, cfg, split.n_users, [np.concatenate(b) for b in buckets]):
        strategy.set_partitions(learn_partitions(grid, cfg.round_timeout_s))
    arrays = setup_phase(grid, strategy, arrays, cfg.round_timeout_s)
    state = start_or_resume(grid, cfg, out_dir, config, strategy, arrays, writer, len(buckets))
    run = state.run
    for rnd in range(state.first_round, cfg.num_rounds + 1):
        t0 = time.perf_counter()
        state.arrays, row = train_round(grid, strategy, rnd, state.arrays, cfg.round_timeout_s,
                                        cfg.min_fit_fraction)
        if strategy.round_cohort is not None:
            row["cohort"] = cohort_log(strategy.round_cohort, split.n_users)
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds:
            t_eval = time.perf_counter()
            pooled = strategy.aggregate_evaluate(rnd, stream_replies(
                grid, strategy.configure_evaluate(rnd, state.arrays, ConfigRecord(), grid),
                cfg.round_timeout_s, strategy.unresponsive)) or {}
            valid, test = split_metrics(dict(pooled), "valid"), split_metrics(dict(pooled), "test")
            row["valid"] = valid
            row["eval_seconds"] = time.perf_counter() - t_eval
            score = valid.get(cfg.selection_metric, -np.inf)
            if score > state.best_score:
                state.best_score, state.since_best = score, 0
                run.update(best_round=rnd, metrics=test, valid_metrics=valid)
            else:
                state.since_best += 1
        row.update(
            bytes_up=strategy.bytes_up,
            bytes_down=strategy.bytes_down,
            seconds=time.perf_counter() - t0,
            peak_rss_mb=peak_rss_mb(),
            dropped=list(strategy.dropped)
            + [strategy.node_name(n) for n in sorted(strategy.unresponsive)],
        )
        writer.append_round(row)
        run.update(
            rounds=rnd,
            wall_s=state.wall_before + time.perf_counter() - t_start,
            peak_rss_mb=max(peak_rss_mb(), run["peak_rss_mb"]),
            bytes_up=run["bytes_up"] + strategy.bytes_up,
            bytes_down=run["bytes_down"] + strategy.bytes_down,
        )
        writer.write_results(config, [run], status="running")
        log(
            INFO,
            "round %d: %s=%.4f (best %.4f at round %s) %.2fs",
            rnd,
            cfg.selection_metric,
            row.get("valid", {}).get(cfg.selection_metric, float("nan")),
            state.best_score,
            run["best_round"],
            row["seconds"],
        )
        stop = bool(cfg.patience and state.since_best >= cfg.patience)
        if cfg.checkpoint_every and (rnd % cfg.checkpoint_every == 0 or stop):
            checkpoint(grid, cfg, out_dir, config, strategy, rnd, state)
        if stop:
            log(INFO, "early stop: no improvement in %d evaluations", cfg.patience)
            break
    writer.write_results(config, [run])
    # spilled node stores of a finished run (simulation: shared disk); checkpoints stay
    shutil.rmtree(out_dir / "node-state" / "live", ignore_errors=True)
    log(INFO, "results written to %s", out_dir)
    return run


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: one federated run from the run config."""
    try:
        cfg = parse_run_config(context.run_config)
        out_dir = (
            Path(cfg.out_dir) if cfg.out_dir else default_out_dir(method_name(cfg), cfg.dataset)
        )
        run_federated(grid, cfg, out_dir.resolve())
    except FloRecError as err:
        log(ERROR, "florec: %s", err)
        # an ordinary exception: Flower then marks the run failed at once and streams the log
        raise RuntimeError(str(err)) from None
