"""A FedAvg node's upload: its users' item-row changes summed on the node.

The node computes it (:mod:`florec.client.fedavg_node`) and the strategy folds it
(:class:`florec.strategies.fedavg.FedAvgRec`); both read the layout from here.

- ``dense``: ``item_emb`` (n_items, d) and ``item_bias`` (n_items,), each user's changes
  weighted by the user's weight; the node's total weight travels as the reply's weight.
- ``sparse``: only the touched items: ``items``, their summed ``item_emb`` / ``item_bias``
  changes and ``counts`` (how many users changed each row).
"""

from __future__ import annotations

import numpy as np

MODES = ("dense", "sparse")


def row_sums(index: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Sum the rows of ``rows`` into ``n`` float64 rows by ``index``.

    The result is bit for bit ``np.add.at(np.zeros((n, d)), index, rows)``: one
    ``np.bincount`` over the flattened ``(row, column)`` cells adds each output cell's terms
    in row order from 0.0, in float64, as ``np.add.at`` does, without its per-row overhead.

    Parameters
    ----------
    index : np.ndarray
        Output row of every input row, ``(R,)`` integers in ``0..n-1``.
    rows : np.ndarray
        ``(R, d)`` values (any real dtype; summed in float64).
    n : int
        Output rows.

    Returns
    -------
    np.ndarray
        ``(n, d)`` float64 sums.

    """
    d = rows.shape[1]
    cells = (np.asarray(index, dtype=np.int64)[:, None] * d + np.arange(d)).ravel()
    return np.bincount(cells, weights=np.asarray(rows, dtype=np.float64).ravel(),
                       minlength=n * d).astype(np.float64, copy=False).reshape(n, d)


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
        emb = row_sums(row_item, delta * w[:, None], n_items)
        bias = np.bincount(row_item, weights=bias_delta * w, minlength=n_items)
        return ({"item_emb": emb.astype(np.float32), "item_bias": bias.astype(np.float32)},
                float(user_weight.sum()))
    items, inv = np.unique(row_item, return_inverse=True)
    emb = row_sums(inv, delta, len(items))
    bias = np.bincount(inv, weights=bias_delta, minlength=len(items))
    counts = np.bincount(inv, minlength=len(items))
    return ({"items": items.astype(np.int64), "item_emb": emb.astype(np.float32),
             "item_bias": bias.astype(np.float32), "counts": counts.astype(np.int64)}, 0.0)
