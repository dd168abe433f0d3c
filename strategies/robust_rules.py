"""The per-row and per-node rules behind the defenses of :mod:`florec.strategies.robust`.

Norm bounding of each user's update, the coordinate-wise median / trimmed mean of each item
row over the users that touched it (Flower's ``trim_mean`` and FedMedian's rule), and
(Multi-)Krum's selection over flat node vectors (Flower's ``select_multikrum``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from florec.protocol.user_rows import clip_user_updates

__all__ = ["krum_select", "norm_bound", "row_aggregate", "stack_user_rows"]


def stack_user_rows(uploads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The per-user uploads of a round as one table, users numbered across uploads.

    Parameters
    ----------
    uploads : list of dict
        Non-empty; each a decoded :mod:`florec.protocol.user_rows` upload (``users`` indexing
        its own ``user_weight``, ``items``, ``item_emb``, ``item_bias``, ``user_weight``).

    Returns
    -------
    dict
        Every key concatenated in upload order, ``users`` offset by the users of the uploads
        before it.

    """
    parts, offset = [], 0
    for up in uploads:
        parts.append(up | {"users": up["users"] + offset})
        offset += len(up["user_weight"])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def norm_bound(users: np.ndarray, emb: np.ndarray, bias: np.ndarray, bound: float
               ) -> tuple[np.ndarray, np.ndarray]:
    r"""Clip each user's whole update to L2 norm ``bound``.

    .. math:: x_u \leftarrow x_u \min\left(1, \frac{C}{\lVert x_u \rVert_2}\right),\quad
              \lVert x_u \rVert_2^2 = \sum_{r: user(r)=u} \lVert dV_r \rVert^2 + db_r^2

    Parameters
    ----------
    users : np.ndarray
        Owner of each row (R,), any non-negative ids.
    emb, bias : np.ndarray
        Row changes (R, d) and (R,).
    bound : float
        ``C``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        The clipped rows.

    """
    emb, bias, _ = clip_user_updates(users, emb, bias, bound)  # shared with DP clipping
    return emb.astype(np.float64), bias.astype(np.float64)


def row_aggregate(items: np.ndarray, emb: np.ndarray, bias: np.ndarray, rule: str,
                  trim: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate-wise ``median`` or ``trimmed-mean`` of the changes of each item row.

    Parameters
    ----------
    items : np.ndarray
        Item of each row (R,).
    emb, bias : np.ndarray
        Row changes (R, d) and (R,).
    rule : {"median", "trimmed-mean"}
        The statistic.
    trim : float
        Share cut from each end (trimmed mean).

    Returns
    -------
    (np.ndarray, np.ndarray, np.ndarray)
        Touched items, their aggregated ``emb`` (I, d) and ``bias`` (I,) changes.

    """
    order = np.argsort(items, kind="stable")
    values = np.concatenate([emb, bias[:, None]], axis=1)[order].astype(np.float64)
    touched, starts = np.unique(items[order], return_index=True)
    out = np.empty((len(touched), values.shape[1]))
    for j, group in enumerate(np.split(values, starts[1:])):
        out[j] = np.median(group, axis=0) if rule == "median" else trim_mean(group, trim)
    return touched, out[:, :-1], out[:, -1]


def krum_select(vectors: list[np.ndarray], num_malicious: int, num_select: int) -> list[int]:
    """Indices kept by (Multi-)Krum over flat update vectors (Flower's rule)."""
    contents = [RecordDict({"arrays": ArrayRecord({"g": Array(v)})}) for v in vectors]
    chosen = select_multikrum(contents, num_malicious, num_select)
    index = {id(c): i for i, c in enumerate(contents)}
    return sorted(index[id(c)] for c in chosen)
