"""FedAvg-MF with a popularity-aware local loss: item popularity by secure sum, then FedAvg.

Before round 1 the strategy runs a secure aggregation (:mod:`florec.protocol.secagg`: double
masking, Shamir-shared seeds, dropouts after masking recovered without a restart) in four setup
stages (keys, share, mask, unmask: ``train.setup`` messages, handled by
:mod:`florec.client.setup_node`): every node contributes its users' item counts and its number of
users, and the server learns only the totals ``pop`` (n counts) and ``U``. They are then sent
inside every training and evaluation message as ``item_pop`` and ``n_users`` and are never
averaged: nodes do not upload them, and :meth:`FairFedAvg.aggregate_train` puts them back into
the new global state.

Supported ``mf-loss``: ``fs-point`` (expectation-exact closed form), ``fs-pair`` (reported as an
approximation: negatives drawn in proportion to popularity), ``ubpr``, ``wmf``, ``relmf``, ``du``.
CPR needs cross-user partners and is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.mf import MF
from florec.protocol.codec import from_record, to_record
from florec.protocol.secagg_wire import STAGES, unpack
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.server.secagg import (
    SETUP_TYPE,
    SecAggRefused,
    SecAggSession,
    check_secagg,
    public_keys,
    refusal,
    stage_problem,
)
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.payload import record_nbytes
from florec.strategies.server_opt import ServerOptimizer

#: ``mf-loss`` values with a federated implementation.
FEDERATED_LOSSES = ("fs-point", "fs-pair", "ubpr", "wmf", "relmf", "du")


class FairFedAvg(FedAvgRec):
    """FedAvg over the item table, after a secure sum of item popularity.

    Parameters
    ----------
    n_items : int
        Catalogue size (the secure-sum vector has ``n_items + 1`` entries: counts and users).
    mode, fraction_train, seed, server_opt
        As in :class:`florec.strategies.fedavg.FedAvgRec`.

    """

    def __init__(self, n_items: int, mode: str = "dense", fraction_train: float = 1.0,
                 seed: int = 0, server_opt: ServerOptimizer | None = None) -> None:
        super().__init__(mode, fraction_train, seed, server_opt)
        self.n_items = n_items
        self.session: SecAggSession | None = None
        self.setup_info = ""
        self.setup_nodes = 0
        self.extras: dict[str, np.ndarray] = {}
        self.setup_bytes = 0

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FairFedAvg: mode=%s, item popularity by secure sum", self.mode)

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Stage 0 asks every node for its keys; stages 1-3: the share, mask, unmask exchanges."""
        if self.extras:
            return []
        before = self.bytes_down
        if stage == 0:
            nodes = sorted(grid.get_node_ids())
            self.setup_nodes = len(nodes)
            self.setup_info = f"fair-popularity|{secrets.token_hex(8)}"
            cfg = ConfigRecord({"setup": "secure-sum", "stage": "keys", "info": self.setup_info,
                                "secagg-nodes": self.setup_nodes})
            msgs = self.messages(RecordDict({"config": cfg}), nodes, SETUP_TYPE)
        else:
            records = self.session.records(STAGES[stage - 1])
            msgs = [m for node, rec in records.items()
                    for m in self.messages(rec, [node], SETUP_TYPE)]
        self.setup_bytes += self.bytes_down - before
        return msgs

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Collect keys (stage 0) and each exchange's replies; at the end, add the totals.

        A failed or malformed reply (no ``arrays`` record, undecodable arrays, a stage's array
        missing: :func:`florec.server.secagg.stage_problem`) is dropped with a one-line reason,
        and that node counts as dropped at this stage.

        Raises
        ------
        RuntimeError
            If no node sent keys; :class:`florec.server.secagg.SecAggRefused` if a node
            refused to unmask, :class:`florec.server.secagg.SecAggTooFew` if too few nodes are
            left (more than ``n - t`` dropped: the popularity cannot be unmasked, and the run
            cannot start without it).

        """
        good: dict[int, dict[str, np.ndarray]] = {}
        for msg in replies:
            if (why := refusal(msg)) is not None:
                raise SecAggRefused(f"secure sum: node {msg.metadata.src_node_id} refused: {why}")
            up, problem = stage_problem(msg, STAGES[stage - 1] if stage else "keys")
            if up is None:  # failed or malformed (undecodable, arrays missing): dropped here
                self.drop(0, msg, f"secure sum stage {stage}: {problem}")
                continue
            self.setup_bytes += record_nbytes(msg.content)
            good[int(msg.metadata.src_node_id)] = up
        if stage == 0:
            roster = {u: k for u, a in good.items() if (k := public_keys(a)) is not None}
            if not roster:
                raise RuntimeError("secure sum: no node sent its public keys")
            self.session = SecAggSession(self.setup_info, roster)
            return arrays
        self.session.take(STAGES[stage - 1], good)
        if self.session.total is None:
            return arrays
        _, total, _ = unpack(self.session.total, 0, 1.0, self.setup_nodes,
                             len(self.session.alive))
        self.extras = {"item_pop": total[:-1].astype(np.float32),
                       "n_users": np.array([total[-1]], dtype=np.int64)}
        log(INFO, "secure sum: item popularity of %d users from %d nodes (%d recovered after "
            "dropping; %d setup bytes)", int(total[-1]), len(self.session.alive),
            len(self.session.dropped), self.setup_bytes)
        return self.with_extras(arrays)

    def with_extras(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` plus ``item_pop`` and ``n_users``."""
        return to_record(from_record(arrays) | self.extras)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the item table; the popularity vector is carried over, not averaged."""
        new, metrics = super().aggregate_train(server_round, replies)
        return (self.with_extras(new) if new is not None else None), metrics


def check_fair_config(cfg: RunConfig) -> None:
    """Fail with one line if ``mf-loss`` has no federated form."""
    if cfg.mf_loss == "cpr":
        raise ConfigError("mf-loss 'cpr' needs partners across users and has no federated form; "
                          f"use one of {', '.join(FEDERATED_LOSSES)} (or run it centrally)")
    if cfg.mf_loss not in FEDERATED_LOSSES:
        raise ConfigError(f"mf-loss '{cfg.mf_loss}' has no federated form here; use bpr or one "
                          f"of {', '.join(FEDERATED_LOSSES)}")
    if cfg.model != "mf":
        raise ConfigError(f"mf-loss={cfg.mf_loss} needs model 'mf', got '{cfg.model}'")


def build_fair_strategy(cfg: RunConfig, n_items: int) -> tuple[FairFedAvg, ArrayRecord]:
    """The strategy of ``algorithm=fedavg`` with a debiasing ``mf-loss`` and its initial state."""
    check_fair_config(cfg)
    init = MF(0, n_items, dim=cfg.dim, seed=cfg.seed, init_std=cfg.init_std)
    server_opt = ServerOptimizer.from_config(cfg)
    strategy = FairFedAvg(n_items, cfg.aggregation, cfg.fraction_train, cfg.seed, server_opt)
    strategy.secagg = check_secagg(cfg)  # the rounds' updates too, under secagg=true
    return strategy, to_record(init.shared_state())
