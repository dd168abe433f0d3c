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
