"""The ServerApp: one federated run from the run config, round by round.

:func:`run_federated` reads as the run's outline; each step lives in its own module:
:mod:`florec.server.federation` (sizes learned from the nodes, partition, strategy, cohorts,
setup; the ServerApp opens no interaction data),
:mod:`florec.server.progress` (fresh start, resume, checkpoints), :mod:`florec.server.rounds`
(training, evaluation, a round's costs), :mod:`florec.server.selection` (best round over
rounds evaluated on the same users), :mod:`florec.server.fused` (``fused-evaluate``: a round's
evaluation carried by the next round's train messages) and :mod:`florec.server.results` (the
results folder).
"""

from __future__ import annotations

import shutil
import time
from logging import DEBUG, ERROR, INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from florec.models.registry import SEQUENTIAL_MODELS
from florec.recdata.cohort import cohort_log
from florec.recdata.errors import FloRecError
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.server.checkpoint import load_checkpoint
from florec.server.federation import Federation, prepare_federation
from florec.server.fused import book_evaluation_drops, check_fused, defers
from florec.server.progress import Progress, save_round_checkpoint, start_or_resume
from florec.server.results import ResultsWriter, default_out_dir, run_entry
from florec.server.rounds import Evaluation, evaluate_round, fused_train_round, round_costs
from florec.server.selection import select_round
from florec.strategies.base import RecStrategy

app = ServerApp()


def method_name(cfg: RunConfig) -> str:
    """The algorithm's display name, e.g. ``fedavg-mf-sparse`` or ``fedcia-mf-factored-r128``."""
    name = f"{cfg.algorithm}-{'mix' if cfg.model_mix else cfg.model}"
    if cfg.model in SEQUENTIAL_MODELS:
        return f"{cfg.algorithm}-{'oracle4rec-' if cfg.oracle else ''}{cfg.model}"
    if cfg.algorithm == "fedavg" and cfg.mf_loss != "bpr":
        name += f"-{cfg.mf_loss}" + ("-approx" if cfg.mf_loss == "fs-pair" else "")
    if cfg.algorithm == "fedavg" and cfg.aggregation != "dense":
        name += f"-{cfg.aggregation}"
    if cfg.algorithm == "fedavg" and cfg.server_opt != "none":
        name += f"-server{cfg.server_opt}"
    elif cfg.algorithm == "fedcia" and cfg.model == "gfcf":
        name += f"-{cfg.gfcf_mode}"
    elif cfg.algorithm == "fedcia" and cfg.fedcia_comm == "factored":
        name += f"-factored-r{cfg.fedcia_rank or 2 * cfg.dim}"
    return name


def results_config(cfg: RunConfig, out_dir: Path, writer: ResultsWriter) -> dict[str, Any]:
    """The flat config of ``config.json`` / ``results.json``, written once.

    Raises
    ------
    ConfigError
        With ``resume``, if ``out_dir`` holds no checkpoint of this config (checked before
        any data is loaded).

    """
    config = cfg.to_flower() | {"out-dir": str(out_dir)}
    if cfg.resume:
        load_checkpoint(out_dir, config)  # fail early: no checkpoint or another config
    writer.write_config(config)
    return config


def record_evaluation(state: Progress, rnd: int, cfg: RunConfig, row: dict[str, Any],
                      evaluation: Evaluation) -> None:
    """Put round ``rnd``'s evaluation in its row and let it compete for the best round."""
    row["valid"] = evaluation.valid
    row["eval_seconds"] = evaluation.seconds
    row["coverage"] = evaluation.coverage.to_json()
    row["comparable"] = select_round(state, rnd, cfg.selection_metric, evaluation.valid,
                                     evaluation.test, evaluation.coverage)


def record_round(state: Progress, rnd: int, cfg: RunConfig, row: dict[str, Any],
                 writer: ResultsWriter, config: dict[str, Any], wall_s: float) -> None:
    """Append the round's row, add its costs to the run entry, rewrite ``results.json``."""
    writer.append_round(row)
    run = state.run
    run.update(rounds=rnd, wall_s=state.wall_before + wall_s,
               bytes_up=run["bytes_up"] + row["bytes_up"],
               bytes_down=run["bytes_down"] + row["bytes_down"])
    writer.write_results(config, [run], status="running")
    if "valid" not in row:  # a round without evaluation (eval-every > 1): progress only
        log(DEBUG, "round %d: trained in %.2fs", rnd, row["seconds"])
        return
    log(INFO, "round %d: %s=%.4f (best %.4f at round %s) %.2fs", rnd, cfg.selection_metric,
        row["valid"].get(cfg.selection_metric, float("nan")), state.best_score,
        run["best_round"], row["seconds"])


def run_federated(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate one federated run; returns its entry of ``results.json``.

    With ``checkpoint-every=N`` the run is checkpointed every N rounds; ``resume=true``
    continues the last checkpoint of ``out_dir`` (see :mod:`florec.server.checkpoint`). The
    best round is selected on the validation metric among rounds evaluated on the same users
    (see :mod:`florec.server.selection`); the entry's ``coverage`` says which users its
    ``metrics`` and ``valid_metrics`` cover.
    """
    if cfg.model in ("agentcf", "agentcf++"):  # a step loop of its own, no arrays (issue 14)
        from florec.strategies.agentcf_flower import run_agentcf_federation

        return run_agentcf_federation(grid, cfg, Path(out_dir))
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    writer = ResultsWriter(out_dir)
    try:
        check_fused(cfg)
        config = results_config(cfg, out_dir, writer)
        fed = prepare_federation(grid, cfg)
        state = start_or_resume(grid, cfg, out_dir, config, fed.strategy, fed.arrays, writer,
                                run_entry(method_name(cfg), "federated", cfg.dataset, cfg.split,
                                          cfg.seed, num_nodes=fed.num_partitions,
                                          **fed.notes))
        for rnd in range(state.first_round, cfg.num_rounds + 1):
            if not run_round(grid, cfg, fed, state, rnd, writer, config, out_dir, t_start):
                break
        finish = getattr(fed.strategy, "after_rounds", None)  # e.g. CoT-Rec's ranker phase
        if finish is not None:
            state.run.update(finish(grid, state.run, out_dir))
        writer.write_results(config, [state.run])
    finally:
        writer.close()
    # spilled node stores of a finished run (simulation: shared disk); checkpoints stay
    shutil.rmtree(out_dir / "node-state" / "live", ignore_errors=True)
    log(INFO, "results written to %s", out_dir)
    return state.run


def run_round(grid: Grid, cfg: RunConfig, fed: Federation, state: Progress, rnd: int,
              writer: ResultsWriter, config: dict[str, Any], out_dir: Path, t_start: float
              ) -> bool:
    """Train, evaluate (every ``eval-every`` rounds and the last), record, checkpoint.

    With ``fused-evaluate`` a due round's evaluation rides on the next round's train messages
    and the round is recorded once they are back (:mod:`florec.server.fused`); an early stop is
    then known one round late: the round that brought the news is kept, evaluated with a plain
    ``evaluate`` message and recorded with ``after_stop`` (it does not compete for the best
    round, which stays the one a run without ``fused-evaluate`` selects).

    Returns
    -------
    bool
        False when ``patience`` evaluations passed without improvement (early stop).

    """
    t0 = time.perf_counter()
    strategy = fed.strategy
    pending, state.pending = state.pending, None
    unresponsive, state.pending_unresponsive = state.pending_unresponsive, set()
    state.arrays, row, carried = fused_train_round(
        grid, strategy, rnd, state.arrays, cfg.round_timeout_s, cfg.min_fit_fraction,
        evaluate=pending["round"] if pending else 0, num_partitions=fed.num_partitions,
        skip_evaluation=unresponsive)
    if strategy.round_cohort is not None:
        row["cohort"] = cohort_log(strategy.round_cohort, fed.n_users)
    if pending is not None and carried is not None:
        book_evaluation_drops(pending, carried.dropped, len(unresponsive))
        judge(state, pending["round"], cfg, pending, carried, strategy)
        record_round(state, pending["round"], cfg, pending, writer, config,
                     time.perf_counter() - t_start)
        if stops(cfg, state):  # known now, after this round's training
            evaluation = evaluate_round(grid, strategy, rnd, state.arrays, cfg.round_timeout_s,
                                        fed.num_partitions)
            row.update(valid=evaluation.valid, eval_seconds=evaluation.seconds,
                       coverage=evaluation.coverage.to_json(), after_stop=True)
            return finish_round(grid, cfg, state, rnd, row, writer, config, out_dir, t_start,
                                strategy, t0, stop=True)
    due = rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds
    if due and defers(cfg, rnd):
        row.update(round_costs(strategy, time.perf_counter() - t0))
        state.pending = row  # recorded with the next round's replies
        state.pending_unresponsive = set(strategy.unresponsive)  # not evaluated then either
        return True
    if due:
        judge(state, rnd, cfg, row, evaluate_round(grid, strategy, rnd, state.arrays,
                                                   cfg.round_timeout_s, fed.num_partitions),
              strategy)
    return finish_round(grid, cfg, state, rnd, row, writer, config, out_dir, t_start, strategy,
                        t0, stop=stops(cfg, state))


def judge(state: Progress, rnd: int, cfg: RunConfig, row: dict[str, Any],
          evaluation: Evaluation, strategy: RecStrategy) -> None:
    """Record round ``rnd``'s evaluation in its row, select, tell the strategy the best round."""
    record_evaluation(state, rnd, cfg, row, evaluation)
    if (selected := getattr(strategy, "best_round_selected", None)) is not None:
        selected(state.run["best_round"])  # e.g. CoT-Rec keeps only that round's arrays


def stops(cfg: RunConfig, state: Progress) -> bool:
    """Whether ``patience`` evaluations passed without improvement."""
    return bool(cfg.patience and state.since_best >= cfg.patience)


def finish_round(grid: Grid, cfg: RunConfig, state: Progress, rnd: int, row: dict[str, Any],
                 writer: ResultsWriter, config: dict[str, Any], out_dir: Path, t_start: float,
                 strategy: RecStrategy, t0: float, stop: bool) -> bool:
    """Add the round's costs, record it, checkpoint it if due (or at a stop); not ``stop``."""
    row.update(round_costs(strategy, time.perf_counter() - t0))
    record_round(state, rnd, cfg, row, writer, config, time.perf_counter() - t_start)
    if cfg.checkpoint_every and (rnd % cfg.checkpoint_every == 0 or stop):
        save_round_checkpoint(grid, cfg, out_dir, config, strategy, rnd, state)
    if stop:
        log(INFO, "early stop: no improvement in %d evaluations", cfg.patience)
    return not stop


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
