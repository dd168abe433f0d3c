"""FedAvg for recommenders: the shared item table is averaged, user embeddings stay on the nodes.

Three aggregation modes:

- ``dense`` (FedMF / FedCIA's baseline): the new item table is the average of the users' item
  tables, weighted by interactions (or uniformly): ``V <- V + sum_u w_u dV_u / sum_u w_u``.
- ``sparse``: each item row is averaged over the users that updated it
  (``V_i <- V_i + sum_{u in U_i} dV_{u,i} / |U_i|``); only touched rows travel up.
- ``sum`` (FCF / FedSGD view): the users' changes are added, ``V <- V + sum_u dV_u``; the upload
  is the sparse one. With one local epoch of SGD in which every user takes one step, a round
  equals one central full-batch step of the summed per-user losses on the round's (stale) table.

The aggregated change ``Delta`` then goes through a server optimiser
(:class:`florec.strategies.server_opt.ServerOptimizer`: FedAvgM, FedAdam or FedYogi with Flower's
update rules; ``none`` adds ``server-lr * Delta``).

Replies are folded into one accumulator as they arrive, so server memory does not grow with
the number of clients. Each node pre-sums its own users' updates
(:func:`florec.protocol.fedavg_upload.node_payload`).

With ``secagg=true`` a training reply carries only the node's public keys (and its metrics);
the node keeps its update, laid out over the whole catalogue (sparse counts included) and
quantised, and the strategy drives the secure aggregation's exchanges
(:func:`florec.server.secagg.run_exchanges`) to get the sum over the nodes that did not drop,
then averages and steps as above.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import from_record, to_record
from florec.protocol.secagg_wire import fedavg_sums, unpack
from florec.server.secagg import (
    SecAggSession,
    SecAggSpec,
    SecAggTooFew,
    public_keys,
    run_exchanges,
)
from florec.strategies.base import RecStrategy
from florec.strategies.dp import UserDP
from florec.strategies.payload import checked_arrays, record_nbytes
from florec.strategies.server_opt import ServerOptimizer, ServerStepping

__all__ = ["MODES", "FedAvgRec", "scatter_add", "sparse_problem"]

#: aggregation modes of :class:`FedAvgRec`
MODES = ("dense", "sparse", "sum")


def upload_mode(aggregation: str) -> str:
    """The node payload layout an aggregation mode needs (``sum`` uploads the sparse rows)."""
    return "dense" if aggregation == "dense" else "sparse"


def scatter_add(items: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.add.at(total, items, values)`` for every ``(total, values)`` of ``pairs``.

    A node's sparse upload lists each item once, in increasing order
    (:func:`florec.protocol.fedavg_upload.node_payload`); then one fancy-indexed ``+=`` per
    array adds exactly what ``np.add.at`` would (each touched cell gets one addition), many
    times faster. Other index lists (repeats, any order: a hand-made or hostile reply) go
    through ``np.add.at``, which adds repeats one after the other.

    Parameters
    ----------
    items : np.ndarray
        Row index of every value row, ``(k,)``.
    pairs : list of (np.ndarray, np.ndarray)
        ``(total, values)``: an accumulator, changed in place, and its ``k`` value rows.

    """
    unique = len(items) < 2 or bool(np.all(items[1:] > items[:-1]))
    for total, values in pairs:
        if unique:
            total[items] += values
        else:
            np.add.at(total, items, values)


def sparse_problem(up: dict[str, np.ndarray], n: int) -> str | None:
    """Why a sparse upload (shapes already checked) cannot be folded, or ``None`` if it can.

    Parameters
    ----------
    up : dict
        The decoded ``items``, ``item_emb``, ``item_bias`` and ``counts``.
    n : int
        Catalogue size.

    Returns
    -------
    str or None
        The problem: ``items`` not integers, row counts that differ between the arrays (a
        single row would otherwise be broadcast), or an item index out of range.

    """
    items = up["items"]
    if not np.issubdtype(items.dtype, np.integer):
        return f"items of dtype {items.dtype}, expected integers"
    rows = {k: len(up[k]) for k in ("items", "item_emb", "item_bias", "counts")}
    if len(set(rows.values())) != 1:
        return f"items and rows of different lengths: {rows}"
    if len(items) and (items.min() < 0 or items.max() >= n):
        return "item index out of range"
    return None


class FedAvgRec(ServerStepping, RecStrategy):
    """FedAvg over the shared item table of an embedding recommender.

    Parameters
    ----------
    mode : {"dense", "sparse", "sum"}
        Aggregation mode (see the module docstring).
    fraction_train : float
        Share of nodes sampled per round (seeded by ``seed`` and the round).
    seed : int
        Seed of node sampling.
    server_opt : ServerOptimizer, optional
        Server step applied to the aggregated change (default: ``none`` at server-lr 1).

    """

    def __init__(self, mode: str = "dense", fraction_train: float = 1.0, seed: int = 0,
                 server_opt: ServerOptimizer | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"aggregation '{mode}' is unknown; choose one of {MODES}")
        super().__init__(fraction_train, seed)
        self.mode = mode
        self.server_opt = server_opt if server_opt is not None else ServerOptimizer()
        self.save_server_state()
        self.current: dict[str, np.ndarray] = {}
        self.dp: UserDP | None = None  # user-level DP (set by the registry when dp=true)
        self.secagg: SecAggSpec | None = None  # secure aggregation (secagg=true)
        self._grid: Grid | None = None
        self._secagg_info, self._secagg_nodes = "", 0
        self.secagg_session: SecAggSession | None = None  # the last round's (tests, benches)

    def summary(self) -> None:
        """Log the configuration."""
        opt = self.server_opt
        log(INFO, "\t├──> FedAvgRec: mode=%s fraction-train=%.2f server-opt=%s server-lr=%g",
            self.mode, self.fraction_train, opt.kind, opt.lr)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the global item table to the sampled nodes."""
        self.current = from_record(arrays)
        self.save_server_state()
        if self.secagg is not None:  # nodes quantise for at most every connected node
            self._grid, self._secagg_nodes = grid, len(list(grid.get_node_ids()))
            self._secagg_info = f"fedavg|round={server_round}|{secrets.token_hex(8)}"
            config["secagg-info"] = self._secagg_info
            config["secagg-nodes"] = self._secagg_nodes
        return self.train_messages(server_round, arrays, config, grid)

    def _expected_shapes(self) -> dict[str, tuple[int, ...] | int]:
        n, d = self.current["item_emb"].shape
        if self.mode == "dense":
            return {"item_emb": (n, d), "item_bias": (n,)}
        return {"items": 0, "item_emb": d, "item_bias": 0, "counts": 0}

    def _check(self, msg: Message, expected: dict[str, tuple[int, ...] | int]
               ) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """A reply's arrays, decoded once, and why they cannot be folded (``None`` if they can)."""
        up, problem = checked_arrays(msg, expected)
        if problem is None and self.mode != "dense":
            problem = sparse_problem(up, self.current["item_emb"].shape[0])
        return up, problem

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold replies into one accumulator as they arrive, then apply the average."""
        if self.secagg is not None:
            return self._aggregate_secure(server_round, replies)
        expected = self._expected_shapes()
        return self._fold(server_round, ((msg, *self._check(msg, expected)) for msg in replies))

    def _fold(self, server_round: int,
              checked: Iterable[tuple[Message, dict[str, np.ndarray] | None, str | None]]
              ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold ``(reply, arrays, problem)`` triples (:meth:`_check`); drop those with a problem."""
        n, d = self.current["item_emb"].shape
        emb_sum, bias_sum = np.zeros((n, d)), np.zeros(n)
        denom = np.zeros(n) if self.mode == "sparse" else np.zeros(1)
        if self.mode == "sum":
            denom[0] = 1.0
        totals: dict[str, float] = {}
        accepted = 0
        for msg, up, problem in checked:
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            metrics = dict(msg.content.metric_records.get("metrics", {}))
            if self.mode == "dense":
                emb_sum += up["item_emb"]
                bias_sum += up["item_bias"]
                denom[0] += metrics.get("weight", 0.0)
            else:
                rows = [(emb_sum, up["item_emb"]), (bias_sum, up["item_bias"])]
                if self.mode == "sparse":
                    rows.append((denom, up["counts"]))
                scatter_add(up["items"], rows)
            for key in ("num-users", "num-pairs", "loss-sum"):
                totals[key] = totals.get(key, 0.0) + float(metrics.get(key, 0.0))
            accepted += 1
        if accepted == 0:
            return None, None
        return self._apply(server_round, emb_sum, bias_sum, denom, totals, accepted)

    def _apply(self, server_round: int, emb_sum: np.ndarray, bias_sum: np.ndarray,
               denom: np.ndarray, totals: dict[str, float], accepted: int
               ) -> tuple[ArrayRecord, MetricRecord]:
        """DP noise (if on), the average and the server step on the round's sums."""
        if self.dp is not None:  # noise on the sum of clipped updates, fixed denominator
            emb_sum, bias_sum, denom = self.dp.privatize(emb_sum, bias_sum)
        safe = np.where(denom > 0, denom, 1.0)
        delta = {"item_emb": emb_sum / safe[:, None], "item_bias": bias_sum / safe}
        tables = {k: self.current[k] for k in delta}
        new = {k: a.astype(np.float32)
               for k, a in self.server_opt.step(tables, delta, server_round).items()}
        train_loss = totals["loss-sum"] / max(totals["num-pairs"], 1.0)
        out = MetricRecord({"train-loss": train_loss, "num-replies": accepted,
                            "num-users": totals["num-users"]})
        if self.dp is not None:
            out.update(self.dp.round_metrics(server_round))
        return to_record(new), out

    def _aggregate_secure(self, server_round: int, replies: Iterable[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Secure aggregation: the replies carry keys; the sum comes from the exchanges.

        A reply without usable keys (a client error, no ``arrays`` record, arrays that do not
        decode) is dropped with its reason before the roster is formed; a malformed reply to a
        later exchange drops that node there (:func:`florec.server.secagg.stage_problem`).
        If more than ``n - t`` nodes drop out, the round's update is skipped (logged, and
        ``secagg-failed = 1`` in its ``train`` row) and the run goes on; a node's refusal
        (:class:`florec.server.secagg.SecAggRefused`: the server misbehaved) stops the run.
        """
        n, d = self.current["item_emb"].shape
        roster, metrics = {}, {}
        for msg in replies:  # an error, missing or undecodable record: dropped before sharing
            up, problem = checked_arrays(msg, {})
            keys = None if up is None else public_keys(up)
            if keys is None:
                self.drop(server_round, msg, problem or "no secure-aggregation keys")
                continue
            self.bytes_up += record_nbytes(msg.content)
            src = int(msg.metadata.src_node_id)
            roster[src] = keys
            metrics[src] = dict(msg.content.metric_records.get("metrics", {}))
        if not roster:
            return None, None
        floor = self.dp.noise_shares if self.dp is not None else 0  # distributed DP
        session = self.secagg_session = SecAggSession(self._secagg_info, roster, floor)
        try:
            costs = run_exchanges(self, self._grid, session, server_round,
                                  self.secagg.timeout_s)
        except SecAggTooFew as exc:  # dropouts: this round fails, the run goes on
            log(WARNING, "round %d: secure aggregation failed, the round's update is skipped: "
                "%s", server_round, exc)
            return None, MetricRecord({"num-replies": 0, "secagg-failed": 1,
                                       "secagg-roster": len(roster),
                                       "secagg-alive": len(session.alive)})
        floats, ints, clipped = unpack(session.total, n * d + n, self.secagg.clip,
                                       self._secagg_nodes, len(session.alive))
        emb_sum, bias_sum, counts = fedavg_sums(floats, ints, n, d)
        alive = [metrics[u] for u in session.alive]
        denom = {"dense": np.array([sum(m.get("weight", 0.0) for m in alive)]),
                 "sparse": counts.astype(np.float64), "sum": np.ones(1)}[self.mode]
        totals = {k: sum(float(m.get(k, 0.0)) for m in alive)
                  for k in ("num-users", "num-pairs", "loss-sum")}
        new, out = self._apply(server_round, emb_sum, bias_sum, denom, totals, len(alive))
        out.update(costs | {"secagg-clipped": clipped})
        if clipped:
            log(WARNING, "round %d: %d summed update entries were clipped to the secure "
                "aggregation range %g; raise secagg-clip", server_round, clipped,
                self.secagg.clip)
        return new, out

    def after_rounds(self, grid: Grid, run: dict, out_dir: object = None) -> dict:
        """Run fields added at the end: the DP accountant's summary (``dp``) if DP is on."""
        return self.dp.summary(int(run.get("rounds", 0))) if self.dp is not None else {}
