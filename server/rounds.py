"""One round of a federated run: training (and a second phase), evaluation, the round's row.

Each function returns what ``rounds.jsonl`` records of its part of the round; the loop in
:func:`florec.server.app.run_federated` strings them together. Every phase's messages go out,
and their replies reach the strategy, in the nodes' partition order
(:meth:`florec.strategies.base.RecStrategy.in_node_order`), whatever order the replies arrive
in: two runs of one config sum the same floats in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.exposure import finalize_exposure
from florec.models.metrics import split_metrics
from florec.protocol.fused import EVALUATE_ROUND
from florec.server.fused import FusedReplies
from florec.server.loop import stream_replies
from florec.server.selection import Coverage
from florec.strategies.base import RecStrategy


def train_round(grid: Grid, strategy: RecStrategy, rnd: int, arrays: ArrayRecord,
                timeout_s: float, min_fit_fraction: float = 0.0
                ) -> tuple[ArrayRecord, dict[str, Any]]:
    """One training round (and the strategy's second phase, if any); returns the new state.

    If fewer than ``min_fit_fraction`` of the sampled nodes reply usably, the round's update is
    discarded (the global state stays as it was) and the run goes on.

    Returns
    -------
    (ArrayRecord, dict)
        The new global state and the round's row so far (``round``, ``train``, ``align``).

    """
    new_arrays, row, _ = fused_train_round(grid, strategy, rnd, arrays, timeout_s,
                                           min_fit_fraction)
    return new_arrays, row


def fused_train_round(grid: Grid, strategy: RecStrategy, rnd: int, arrays: ArrayRecord,
                      timeout_s: float, min_fit_fraction: float = 0.0, evaluate: int = 0,
                      num_partitions: int = 0, skip_evaluation: Collection[int] = ()
                      ) -> tuple[ArrayRecord, dict[str, Any], Evaluation | None]:
    """:func:`train_round` whose messages may also carry round ``evaluate``'s evaluation.

    With ``evaluate = r`` (> 0; ``arrays`` are round r's global model) the train messages ask
    the nodes to evaluate ``arrays`` before training (``fused-evaluate``,
    :mod:`florec.server.fused`); the strategy pools those evaluations as round r's with its
    ``aggregate_evaluate`` after aggregating the training replies with ``aggregate_train``.
    The evaluations of ``skip_evaluation`` (the nodes that missed a reply of round r, which a
    separate run does not evaluate) are discarded; the nodes whose evaluation failed go to the
    evaluation's :attr:`Evaluation.dropped` (round r's), not to this round's ``dropped``.

    Returns
    -------
    (ArrayRecord, dict, Evaluation or None)
        As :func:`train_round`, plus round ``evaluate``'s pooled evaluation (None without).

    """
    strategy.start_round()
    config = ConfigRecord({EVALUATE_ROUND: evaluate} if evaluate > 0 else {})
    messages = strategy.in_node_order(strategy.configure_train(rnd, arrays, config, grid))
    replies = stream_replies(grid, messages, timeout_s, strategy.unresponsive)
    fused = FusedReplies(replies, skip_evaluation) if evaluate > 0 else None
    new_arrays, train_metrics = strategy.aggregate_train(
        rnd, replies if fused is None else fused)
    evaluation = None
    if fused is not None:
        trained = len(strategy.dropped)
        evaluation = pooled_evaluation(strategy, evaluate, fused.evaluations, num_partitions,
                                       fused.seconds)
        evaluation.dropped = strategy.dropped[trained:]  # booked in round `evaluate`'s row
        del strategy.dropped[trained:]
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
    align = strategy.in_node_order(strategy.configure_align(rnd, grid))
    if align:
        row["align"] = dict(strategy.aggregate_align(
            rnd, stream_replies(grid, align, timeout_s, strategy.unresponsive)))
    return new_arrays, row, evaluation


@dataclass
class Evaluation:
    """One round's pooled evaluation.

    Attributes
    ----------
    valid, test : dict of str to float
        Per-user means of each split (with ``num-users``).
    coverage : Coverage
        The partitions (and so the users) the means cover.
    seconds : float
        Wall-clock time of the evaluation.
    dropped : list of str
        A fused evaluation's failed nodes (a plain evaluation leaves them in the strategy's
        ``dropped``, which the round's costs read).

    """

    valid: dict[str, float]
    test: dict[str, float]
    coverage: Coverage
    seconds: float
    dropped: list[str] = field(default_factory=list)


def evaluate_round(grid: Grid, strategy: RecStrategy, rnd: int, arrays: ArrayRecord,
                   timeout_s: float, num_partitions: int) -> Evaluation:
    """Ask every responsive node to evaluate all its users; pool their metric sums."""
    t0 = time.perf_counter()
    messages = strategy.in_node_order(strategy.configure_evaluate(rnd, arrays, ConfigRecord(),
                                                                  grid))
    replies = stream_replies(grid, messages, timeout_s, strategy.unresponsive)
    evaluation = pooled_evaluation(strategy, rnd, replies, num_partitions, 0.0)
    evaluation.seconds = time.perf_counter() - t0
    return evaluation


def pooled_evaluation(strategy: RecStrategy, rnd: int, replies: Iterable[Message],
                      num_partitions: int, seconds: float) -> Evaluation:
    """Round ``rnd``'s evaluation replies pooled by the strategy (``aggregate_evaluate``)."""
    pooled = dict(strategy.aggregate_evaluate(rnd, replies) or {})
    valid, test = split_metrics(pooled, "valid"), split_metrics(pooled, "test")
    if exposure := finalize_exposure(pooled):  # target items' ER@K and mean rank (issue 18)
        valid, test = valid | exposure, test | exposure
    coverage = Coverage.of(strategy.evaluated_partitions, num_partitions, valid, test)
    return Evaluation(valid, test, coverage, seconds)


def round_costs(strategy: RecStrategy, seconds: float) -> dict[str, Any]:
    """The round's bytes, time and the nodes whose replies were dropped or missing.

    (The writer adds the run's memory to every row, see :mod:`florec.server.results`.)
    """
    return {"bytes_up": strategy.bytes_up, "bytes_down": strategy.bytes_down,
            "seconds": seconds,
            "dropped": list(strategy.dropped)
            + [strategy.node_name(n) for n in sorted(strategy.unresponsive)]}
