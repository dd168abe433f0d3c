"""FedAvg-MF with a popularity-aware local loss: item popularity by secure sum, then FedAvg.

Before round 1 the strategy runs the secure sum of :mod:`florec.protocol.secure_sum` in setup
stages (``train.setup`` messages, handled by :mod:`florec.client.setup_node`): every node
contributes its users' item counts and its number of users, and the server learns only the totals
``pop`` (n counts) and ``U``. They are then sent inside every training and evaluation message as
``item_pop`` and ``n_users`` and are never averaged: nodes do not upload them, and
:meth:`FairFedAvg.aggregate_train` puts them back into the new global state.

Supported ``mf-loss``: ``fs-point`` (expectation-exact closed form), ``fs-pair`` (reported as an
approximation: negatives drawn in proportion to popularity), ``ubpr``, ``wmf``, ``relmf``, ``du``.
CPR needs cross-user partners and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.mf import MF
from florec.protocol.codec import from_record, to_record
from florec.protocol.secure_sum import KEY_BYTES, unmask_sum
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.strategies.fedavg import FedAvgRec

#: ``mf-loss`` values with a federated implementation.
FEDERATED_LOSSES = ("fs-point", "fs-pair", "ubpr", "wmf", "relmf", "du")
SETUP_TYPE = f"{MessageType.TRAIN}.setup"
#: Mask-stage attempts before the setup gives up (each drops the nodes that did not reply).
MAX_ATTEMPTS = 3


class FairFedAvg(FedAvgRec):
    """FedAvg over the item table, after a secure sum of item popularity.

    Parameters
    ----------
    n_items : int
        Catalogue size (the secure-sum vector has ``n_items + 1`` entries: counts and users).
    mode, fraction_train, seed
        As in :class:`florec.strategies.fedavg.FedAvgRec`.

    """

    def __init__(self, n_items: int, mode: str = "dense", fraction_train: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(mode, fraction_train, seed)
        self.n_items = n_items
        self.public_keys: dict[int, bytes] = {}
        self.participants: list[int] = []
        self.extras: dict[str, np.ndarray] = {}
        self.setup_bytes = 0

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FairFedAvg: mode=%s, item popularity by secure sum", self.mode)

    def _setup_messages(self, record: RecordDict, nodes: list[int]) -> list[Message]:
        before = self.bytes_down
        msgs = self.messages(record, nodes, SETUP_TYPE)
        self.setup_bytes += self.bytes_down - before
        return msgs

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Stage 0 asks every node for a public key; stages 1.. ask the participants to mask."""
        if self.extras:
            return []
        if stage == 0:
            cfg = ConfigRecord({"setup": "secure-sum", "stage": "keys", "attempt": 0})
            return self._setup_messages(RecordDict({"config": cfg}), sorted(grid.get_node_ids()))
        if stage > MAX_ATTEMPTS:
            raise RuntimeError(f"secure sum failed after {MAX_ATTEMPTS} attempts")
        ids = np.array(self.participants, dtype=np.uint64)  # Flower node ids are 64-bit unsigned
        keys = np.stack([np.frombuffer(self.public_keys[n], dtype=np.uint8) for n in ids])
        cfg = ConfigRecord({"setup": "secure-sum", "stage": "mask", "attempt": stage})
        record = RecordDict({"config": cfg,
                             "arrays": to_record({"peer_ids": ids, "peer_keys": keys})})
        return self._setup_messages(record, self.participants)

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Collect keys (stage 0) or masked vectors; on a full set, add the totals to the state."""
        replies = list(replies)
        if stage == 0:
            for msg in replies:
                if msg.has_error() or "arrays" not in msg.content.array_records:
                    self.drop(0, msg, "no public key")
                    continue
                pk = from_record(msg.content.array_records["arrays"])["public_key"]
                if pk.shape != (KEY_BYTES,):
                    self.drop(0, msg, "malformed public key")
                    continue
                self.public_keys[int(msg.metadata.src_node_id)] = pk.astype(np.uint8).tobytes()
            self.participants = sorted(self.public_keys)
            if not self.participants:
                raise RuntimeError("secure sum: no node sent a public key")
            return arrays
        uploads: dict[int, np.ndarray] = {}
        for msg in replies:
            src = int(msg.metadata.src_node_id)
            if msg.has_error() or "arrays" not in msg.content.array_records:
                self.drop(0, msg, f"no masked vector (attempt {stage})")
                continue
            y = from_record(msg.content.array_records["arrays"]).get("masked")
            if y is None or y.shape != (self.n_items + 1,) or src not in self.participants:
                self.drop(0, msg, "malformed masked vector")
                continue
            uploads[src] = y
        if set(uploads) != set(self.participants):
            missing = sorted(set(self.participants) - set(uploads))
            log(WARNING, "secure sum attempt %d: no vector from node(s) %s; retrying with the "
                "%d others", stage, missing, len(uploads))
            self.participants = sorted(uploads)
            return arrays
        total = unmask_sum([uploads[n] for n in self.participants])
        self.extras = {"item_pop": total[:-1].astype(np.float32),
                       "n_users": np.array([total[-1]], dtype=np.int64)}
        log(INFO, "secure sum: item popularity of %d users from %d nodes (%d setup bytes down)",
            int(total[-1]), len(self.participants), self.setup_bytes)
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
    return (FairFedAvg(n_items, cfg.aggregation, cfg.fraction_train, cfg.seed),
            to_record(init.shared_state()))
