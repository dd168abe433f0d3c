"""FedAvg for recommenders: the shared item table is averaged, user embeddings stay on the nodes.

Two aggregation modes:

- ``dense`` (FedMF / FedCIA's baseline): the new item table is the average of the users' item
  tables, weighted by interactions (or uniformly): ``V <- V + sum_u w_u dV_u / sum_u w_u``.
- ``sparse``: each item row is averaged over the users that updated it
  (``V_i <- V_i + sum_{u in U_i} dV_{u,i} / |U_i|``); only touched rows travel up.

Replies are folded into one accumulator as they arrive, so server memory does not grow with
the number of clients. Each node pre-sums its own users' updates
(:func:`florec.protocol.fedavg_upload.node_payload`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import MODES, node_payload
from florec.strategies.base import RecStrategy
from florec.strategies.payload import check_reply, record_nbytes

__all__ = ["MODES", "FedAvgRec", "node_payload"]


class FedAvgRec(RecStrategy):
    """FedAvg over the shared item table of an embedding recommender.

    Parameters
    ----------
    mode : {"dense", "sparse"}
        Aggregation mode (see the module docstring).
    fraction_train : float
        Share of nodes sampled per round (seeded by ``seed`` and the round).
    seed : int
        Seed of node sampling.

    """

    def __init__(self, mode: str = "dense", fraction_train: float = 1.0, seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"aggregation '{mode}' is unknown; choose one of {MODES}")
        super().__init__(fraction_train, seed)
        self.mode = mode
        self.current: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedAvgRec: mode=%s fraction-train=%.2f", self.mode, self.fraction_train)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the global item table to the sampled nodes."""
        self.current = from_record(arrays)
        return self.train_messages(server_round, arrays, config, grid)

    def _expected_shapes(self) -> dict[str, tuple[int, ...] | int]:
        n, d = self.current["item_emb"].shape
        if self.mode == "dense":
            return {"item_emb": (n, d), "item_bias": (n,)}
        return {"items": 0, "item_emb": d, "item_bias": 0, "counts": 0}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold replies into one accumulator as they arrive, then apply the average."""
        n, d = self.current["item_emb"].shape
        emb_sum, bias_sum = np.zeros((n, d)), np.zeros(n)
        denom = np.zeros(n) if self.mode == "sparse" else np.zeros(1)
        totals: dict[str, float] = {}
        accepted = 0
        expected = self._expected_shapes()
        for msg in replies:
            problem = check_reply(msg, expected)
            if problem is None and self.mode == "sparse":
                items = from_record(msg.content.array_records["arrays"])["items"]
                if len(items) and (items.min() < 0 or items.max() >= n):
                    problem = "item index out of range"
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            up = from_record(msg.content.array_records["arrays"])
            metrics = dict(msg.content.metric_records.get("metrics", {}))
            if self.mode == "dense":
                emb_sum += up["item_emb"]
                bias_sum += up["item_bias"]
                denom[0] += metrics.get("weight", 0.0)
            else:
                np.add.at(emb_sum, up["items"], up["item_emb"])
                np.add.at(bias_sum, up["items"], up["item_bias"])
                np.add.at(denom, up["items"], up["counts"])
            for key in ("num-users", "num-pairs", "loss-sum"):
                totals[key] = totals.get(key, 0.0) + float(metrics.get(key, 0.0))
            accepted += 1
        if accepted == 0:
            return None, None
        safe = np.where(denom > 0, denom, 1.0)
        new = {"item_emb": (self.current["item_emb"] + emb_sum / safe[:, None]).astype(np.float32),
               "item_bias": (self.current["item_bias"] + bias_sum / safe).astype(np.float32)}
        train_loss = totals["loss-sum"] / max(totals["num-pairs"], 1.0)
        out = MetricRecord({"train-loss": train_loss, "num-replies": accepted,
                            "num-users": totals["num-users"]})
        return to_record(new), out
