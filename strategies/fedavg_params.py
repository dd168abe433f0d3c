r"""Generic FedAvg over every shared array of a model (sequential recommenders, Oracle4Rec).

Each sampled node returns its locally trained arrays and a weight (its declared number of
training positions). The new global state is the weighted mean

.. math:: \theta \leftarrow \frac{\sum_k n_k \theta_k}{\sum_k n_k}

folded into one float64 accumulator as replies arrive, so server memory does not grow with the
number of clients. With ``server-opt``/``server-lr`` other than plain FedAvg (``none`` at 1),
the change :math:`\Delta_t` = mean - current goes through the server optimiser
(:class:`florec.strategies.server_opt.ServerOptimizer`: FedAvgM, FedAdam, FedYogi as in Flower;
``server-lr`` > 1 takes a longer step along the average of the nodes' local epochs).
Replies with a wrong array set or shape, non-finite values, or a negative weight are dropped;
replies with weight 0 (nodes without training positions) count as replies but do not move the
mean.

With ``aggregation='item-weighted'`` each row :math:`i` of the item table is averaged with its
own weights, the count :math:`c_{k,i}` of item :math:`i` in node :math:`k`'s training windows
(sent beside the arrays as ``item-counts``):

.. math:: E_i \leftarrow \frac{\sum_k c_{k,i} E_{k,i}}{\sum_k c_{k,i}}

(rows no node holds keep the position-weighted mean). Under full-softmax CE every node moves
every row (on Amazon-Scientific one local epoch moves the rows a node never sees about twice as
far as those it holds: ``bench/fedseq_item_rows.py``); the count weights let the nodes that
hold an item decide its row.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.registry import sequential_from_config
from florec.protocol.codec import from_record, to_record
from florec.protocol.item_counts import COUNTS_RECORD, ITEM_TABLE_SUFFIX, record_counts
from florec.protocol.public_knowledge import needs_knowledge
from florec.recdata.runconfig import RunConfig
from florec.strategies.base import RecStrategy
from florec.strategies.payload import checked_arrays, record_nbytes
from florec.strategies.server_opt import ServerOptimizer, ServerStepping

WEIGHT_KEY = "num-positions"


class FedAvgParams(ServerStepping, RecStrategy):
    """FedAvg of all arrays of the global state, weighted by declared training positions.

    Parameters
    ----------
    fraction_train : float
        Share of nodes sampled per round (seeded by ``seed`` and the round).
    seed : int
        Seed of node sampling.
    server_opt : ServerOptimizer, optional
        Server step applied to the change of the weighted mean (default: ``none`` at
        server-lr 1, plain FedAvg).
    item_weighted : bool
        Average each item-table row (arrays named ``*item.weight``) with the nodes' item
        counts as weights (``aggregation='item-weighted'``).

    """

    def __init__(self, fraction_train: float = 1.0, seed: int = 0,
                 server_opt: ServerOptimizer | None = None, item_weighted: bool = False
                 ) -> None:
        super().__init__(fraction_train, seed)
        self.item_weighted = item_weighted
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.current: dict[str, np.ndarray] = {}
        self.server_opt = server_opt if server_opt is not None else ServerOptimizer()
        self.save_server_state()

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedAvgParams: fraction-train=%.2f server-opt=%s server-lr=%g "
            "item-weighted=%s", self.fraction_train, self.server_opt.kind, self.server_opt.lr,
            self.item_weighted)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the global arrays to the sampled nodes."""
        self.current = from_record(arrays)
        self.shapes = {k: v.shape for k, v in self.current.items()}
        self.dtypes = {k: v.dtype for k, v in self.current.items()}
        self.save_server_state()
        return self.train_messages(server_round, arrays, config, grid)

    def checked_reply(self, msg: Message
                      ) -> tuple[str | None, dict[str, float], float, dict[str, np.ndarray]]:
        """Why a reply cannot be aggregated (or ``None``), its metrics, weight and arrays.

        :func:`~florec.strategies.payload.checked_arrays` (every expected array, its shape,
        finite values) plus a non-negative ``num-positions`` weight and no array beyond the
        model's.
        """
        arrays, problem = checked_arrays(msg, self.shapes)
        metrics = {} if problem else dict(msg.content.metric_records.get("metrics", {}))
        weight = float(metrics.get(WEIGHT_KEY, -1.0))
        if problem is None and not weight >= 0:
            problem = f"reply lacks a non-negative '{WEIGHT_KEY}'"
        up = {} if problem else arrays
        if extra := set(up) - set(self.shapes):
            problem = f"reply has unknown arrays {sorted(extra)}"
        if problem is None and self.item_weighted:
            counts, problem = self.checked_counts(msg)
            up = {} if problem else up | {COUNTS_RECORD: counts}
        return problem, metrics, weight, up

    def item_tables(self) -> list[str]:
        """Names of the item tables: arrays ``*item.weight`` (row 0 is padding)."""
        return [k for k in self.shapes if k.endswith(ITEM_TABLE_SUFFIX)]

    def checked_counts(self, msg: Message) -> tuple[np.ndarray | None, str | None]:
        """The reply's per-item counts (one per item-table row, finite, >= 0) or the problem."""
        rows = {self.shapes[k][0] for k in self.item_tables()}
        if COUNTS_RECORD not in msg.content.array_records:
            return None, f"reply lacks the '{COUNTS_RECORD}' record (aggregation='item-weighted')"
        counts = record_counts(msg.content.array_records[COUNTS_RECORD])
        if counts is None or counts.ndim != 1 or {len(counts)} != rows:
            return None, f"'{COUNTS_RECORD}' must hold one count per item-table row {sorted(rows)}"
        if not (np.all(np.isfinite(counts)) and np.all(counts >= 0)):
            return None, f"'{COUNTS_RECORD}' holds negative or non-finite counts"
        return counts.astype(np.float64), None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold each reply into the weighted sum as it arrives, then divide once."""
        acc = {k: np.zeros(s, dtype=np.float64) for k, s in self.shapes.items()}
        tables = self.item_tables() if self.item_weighted else []
        rows = {k: np.zeros(self.shapes[k], dtype=np.float64) for k in tables}
        row_w = {k: np.zeros(self.shapes[k][0], dtype=np.float64) for k in tables}
        total_w, loss_sum, users, accepted = 0.0, 0.0, 0.0, 0
        for msg in replies:
            problem, metrics, weight, up = self.checked_reply(msg)
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            counts = up.pop(COUNTS_RECORD, None)
            if weight > 0:
                for k, v in up.items():
                    acc[k] += weight * v
                for k in tables:
                    rows[k] += counts[:, None] * up[k]
                    row_w[k] += counts
            total_w += weight
            loss_sum += float(metrics.get("loss-sum", 0.0))
            users += float(metrics.get("num-users", 0.0))
            accepted += 1
        if accepted == 0 or total_w <= 0:
            return None, None
        mean = {k: v / total_w for k, v in acc.items()}
        for k in tables:  # rows some node holds: their count-weighted mean
            held = row_w[k] > 0
            mean[k][held] = rows[k][held] / row_w[k][held, None]
        new = self.server_step(server_round, mean)
        out = MetricRecord({"train-loss": loss_sum / total_w, "num-replies": accepted,
                            "num-users": users, "num-positions": total_w})
        return to_record(new), out

    def server_step(self, server_round: int, mean: dict[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
        """The new global arrays from the round's weighted mean (float64), in the model's dtypes.

        Plain FedAvg (``none`` at server-lr 1) takes the mean itself; otherwise the server
        optimiser steps from the round's global arrays along ``mean - current``.
        """
        opt = self.server_opt
        if opt.kind != "none" or opt.lr != 1.0:
            delta = {k: v - self.current[k] for k, v in mean.items()}
            mean = opt.step({k: self.current[k] for k in mean}, delta, server_round)
        return {k: v.astype(self.dtypes[k]) for k, v in mean.items()}


def build_sequential_strategy(cfg: RunConfig, n_items: int) -> tuple[RecStrategy, ArrayRecord]:
    """The FedAvg strategy and the seeded model's shared arrays as the initial global state."""
    init = sequential_from_config(cfg, n_items)
    if cfg.defense != "none" or needs_knowledge(cfg):  # attacks, robust aggregation (issue 18)
        from florec.strategies.robust_params import RobustFedAvgParams

        return RobustFedAvgParams(cfg.defense, cfg.defense_norm, cfg.defense_trim,
                                  cfg.defense_malicious, cfg.defense_select,
                                  knowledge=needs_knowledge(cfg), fraction_train=cfg.fraction_train,
                                  seed=cfg.seed), to_record(init.shared_state())
    server_opt = ServerOptimizer.from_config(cfg)
    return (FedAvgParams(cfg.fraction_train, cfg.seed, server_opt,
                         item_weighted=cfg.aggregation == "item-weighted"),
            to_record(init.shared_state()))
