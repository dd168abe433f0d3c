r"""Robust aggregation of dense model uploads (FedAvgParams: SASRec, GRU4Rec) (issue 18).

Each node uploads all arrays ``theta_k`` of its locally trained model with weight ``n_k`` (its
training positions); a node hosts a bucket of users, so every defense here is at node level.
With ``theta_g`` the round's global model and ``Delta_k = theta_k - theta_g`` (all arrays
concatenated):

- ``norm-bound``: ``Delta_k <- Delta_k min(1, C / ||Delta_k||_2)`` (``C`` = ``defense-norm``),
  then FedAvg's weighted mean ``theta_g + sum_k n_k Delta_k / sum_k n_k``;
- ``median``: the coordinate-wise median of the ``theta_k`` (unweighted; Flower's FedMedian);
- ``trimmed-mean``: the coordinate-wise mean after cutting ``floor(beta K)`` values at each end
  (``beta`` = ``defense-trim``; Flower's ``trim_mean``, Yin et al., ICML 2018);
- ``krum`` / ``multi-krum``: Flower's ``select_multikrum`` over the ``Delta_k`` keeps 1 /
  ``defense-select`` (default ``K - f``) nodes (Blanchard et al., NeurIPS 2017), averaged as
  FedAvg does.

All rules equal FedAvg when every node uploads the same model (tested). Unlike the streaming
fold of :class:`florec.strategies.fedavg_params.FedAvgParams`, the server keeps every node's
model for the round.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from florec.protocol.codec import from_record, to_record
from florec.strategies.fedavg_params import FedAvgParams
from florec.strategies.payload import record_nbytes
from florec.strategies.public_knowledge import PublicKnowledge
from florec.strategies.robust import NODE_DEFENSES, Defended, krum_select

__all__ = ["RobustFedAvgParams", "robust_mean"]


def robust_mean(start: dict[str, np.ndarray], models: list[dict[str, np.ndarray]],
                weights: np.ndarray, defense: str, norm: float = 1.0, trim: float = 0.1,
                num_malicious: int = 0, num_select: int = 0) -> dict[str, np.ndarray]:
    """The new global arrays from the nodes' ``models`` under ``defense`` (module docstring).

    Parameters
    ----------
    start : dict of str to np.ndarray
        The round's global arrays ``theta_g``.
    models : list of dict of str to np.ndarray
        Each node's uploaded arrays (same keys and shapes as ``start``).
    weights : np.ndarray
        Each node's weight ``n_k`` (positive sum).
    defense : str
        ``none``, ``norm-bound``, ``median``, ``trimmed-mean``, ``krum`` or ``multi-krum``.
    norm, trim, num_malicious, num_select
        ``defense-norm``, ``defense-trim``, ``defense-malicious``, ``defense-select``.

    Returns
    -------
    dict of str to np.ndarray
        float64 arrays of the new global state.

    """
    keys = sorted(start)
    base = np.concatenate([start[k].astype(np.float64).ravel() for k in keys])
    delta = np.stack([np.concatenate([m[k].astype(np.float64).ravel() for k in keys]) - base
                      for m in models])
    w = np.asarray(weights, dtype=np.float64)
    if defense == "norm-bound":
        scale = np.minimum(1.0, norm / np.maximum(np.linalg.norm(delta, axis=1), 1e-300))
        delta = delta * scale[:, None]
    if defense in NODE_DEFENSES and len(models) > 1:
        keep = 1 if defense == "krum" else (num_select or max(1, len(models) - num_malicious))
        kept = krum_select(list(delta), num_malicious, keep)
        delta, w = delta[kept], w[kept]
    if defense == "median":
        flat = base + np.median(delta, axis=0)
    elif defense == "trimmed-mean":
        flat = base + trim_mean(delta, trim)
    else:
        flat = base + (w[:, None] * delta).sum(0) / w.sum()
    out, at = {}, 0
    for k in keys:
        size = start[k].size
        out[k] = flat[at:at + size].reshape(start[k].shape)
        at += size
    return out


class RobustFedAvgParams(Defended, PublicKnowledge, FedAvgParams):
    """:class:`FedAvgParams` with a node-level defense and the attack setup.

    Takes :class:`florec.strategies.robust.Defended`'s knobs (the rules of :func:`robust_mean`);
    the other keywords go to :class:`FedAvgParams`.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.start: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember the round's global arrays (the defenses work on changes), then send them."""
        self.start = from_record(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The defense's mean of the valid replies (FedAvg's fold with ``defense='none'``)."""
        if self.defense == "none":
            return super().aggregate_train(server_round, replies)
        models, weights, loss_sum, users = [], [], 0.0, 0.0
        for msg in replies:
            problem, metrics, weight, up = self.checked_reply(msg)
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            loss_sum += float(metrics.get("loss-sum", 0.0))
            users += float(metrics.get("num-users", 0.0))
            if weight > 0:  # nodes without training positions do not move the mean
                models.append(up)
                weights.append(weight)
        if not models:
            return None, None
        new = robust_mean(self.start, models, np.array(weights), self.defense, self.norm,
                          self.trim, self.num_malicious, self.num_select)
        total = float(np.sum(weights))
        out = MetricRecord({"train-loss": loss_sum / total, "num-replies": len(models),
                            "num-users": users, "num-positions": total})
        return to_record({k: v.astype(self.dtypes[k]) for k, v in new.items()}), out
