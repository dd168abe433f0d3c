"""FedAvg for recommenders: the shared item table is averaged, user embeddings stay on the nodes.

Two aggregation modes:

- ``dense`` (FedMF / FedCIA's baseline): the new item table is the average of the users' item
  tables, weighted by interactions (or uniformly): ``V <- V + sum_u w_u dV_u / sum_u w_u``.
- ``sparse``: each item row is averaged over the users that updated it
  (``V_i <- V_i + sum_{u in U_i} dV_{u,i} / |U_i|``); only touched rows travel up.

Replies are folded into one accumulator as they arrive, so server memory does not grow with
the number of clients. Each node pre-sums its own users' updates (see :func:`node_payload`).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from models.metrics import add_sums
from strategies.payload import check_reply, from_record, record_nbytes, to_record

MODES = ("dense", "sparse")


def node_payload(mode: str, n_items: int, row_user: np.ndarray, row_item: np.ndarray,
                 delta: np.ndarray, bias_delta: np.ndarray, user_weight: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], float]:
    """Sum a node's per-user row changes into the upload of one node.

    Parameters
    ----------
    mode : {"dense", "sparse"}
        Aggregation mode.
    n_items : int
        Catalogue size.
    row_user, row_item : np.ndarray
        Owner (bucket-local user index) and item of each changed row.
    delta, bias_delta : np.ndarray
        Row changes (rows, d) and (rows,).
    user_weight : np.ndarray
        Weight of each bucket user (dense mode); users with weight 0 are not counted.

    Returns
    -------
    (dict, float)
        The arrays to upload and the node's total weight (dense) or 0 (sparse).

    """
    if mode == "dense":
        w = user_weight[row_user].astype(np.float64)
        emb = np.zeros((n_items, delta.shape[1]), dtype=np.float64)
        np.add.at(emb, row_item, delta * w[:, None])
        bias = np.bincount(row_item, weights=bias_delta * w, minlength=n_items)
        return ({"item_emb": emb.astype(np.float32), "item_bias": bias.astype(np.float32)},
                float(user_weight.sum()))
    items, inv = np.unique(row_item, return_inverse=True)
    emb = np.zeros((len(items), delta.shape[1]), dtype=np.float64)
    np.add.at(emb, inv, delta)
    bias = np.bincount(inv, weights=bias_delta, minlength=len(items))
    counts = np.bincount(inv, minlength=len(items))
    return ({"items": items.astype(np.int64), "item_emb": emb.astype(np.float32),
             "item_bias": bias.astype(np.float32), "counts": counts.astype(np.int64)}, 0.0)


class FedAvgRec(Strategy):
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
        self.mode, self.fraction_train, self.seed = mode, fraction_train, seed
        self.current: dict[str, np.ndarray] = {}
        self.bytes_down = self.bytes_up = 0
        self.dropped: list[str] = []

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedAvgRec: mode=%s fraction-train=%.2f", self.mode, self.fraction_train)

    def _messages(self, record: RecordDict, node_ids: list[int], kind: str) -> list[Message]:
        self.bytes_down += record_nbytes(record) * len(node_ids)
        return [Message(content=record, message_type=kind, dst_node_id=n) for n in node_ids]

    def sample(self, node_ids: list[int], server_round: int) -> list[int]:
        """Seeded sample of ``fraction_train`` of the nodes (all of them at 1.0)."""
        node_ids = sorted(node_ids)
        k = max(1, int(round(self.fraction_train * len(node_ids))))
        if k >= len(node_ids):
            return node_ids
        rng = np.random.default_rng([self.seed, 17, server_round])
        return sorted(rng.choice(node_ids, size=k, replace=False).tolist())

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the global item table to the sampled nodes."""
        self.current = from_record(arrays)
        self.bytes_down = self.bytes_up = 0
        self.dropped = []
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        nodes = self.sample(list(grid.get_node_ids()), server_round)
        return self._messages(record, nodes, MessageType.TRAIN)

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
                who = f"node {msg.metadata.src_node_id}"
                log(WARNING, "round %d: skipping reply of %s: %s", server_round, who, problem)
                self.dropped.append(who)
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

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the global table to every node for federated evaluation (all users count)."""
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return self._messages(record, sorted(grid.get_node_ids()), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Pool per-user metric sums over nodes (never an average of node means)."""
        sums: dict[str, float] = {}
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: evaluation failed on node %d: %s", server_round,
                    msg.metadata.src_node_id, msg.error.reason)
                self.dropped.append(f"node {msg.metadata.src_node_id}")
                continue
            node_sums = dict(msg.content.metric_records["metrics"])
            node_sums.pop("partition-id", None)
            sums = add_sums(sums, node_sums)
        return MetricRecord(sums) if sums else None
