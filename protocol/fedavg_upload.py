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
import scipy.sparse

MODES = ("dense", "sparse")


#: temporary memory of :func:`row_sums` per column block (bytes), besides its output
BLOCK_BYTES = 64 << 20


def row_sums(index: np.ndarray, rows: np.ndarray, n: int,
             block_bytes: int = BLOCK_BYTES, weights: np.ndarray | None = None
             ) -> np.ndarray:
    """Sum the rows of ``rows`` (each times its weight, if given) into ``n`` float64 rows.

    ``out[i] = sum_{r : index[r] = i} rows[r] * weights[r]``, added in row order from 0.0 in
    float64: bit for bit ``np.add.at(np.zeros((n, d)), index, rows)`` (with weights: ``rows *
    weights[:, None]``, a float64 product made here one column block at a time), without its
    per-row overhead. The sum is the product of an ``(n, R)`` 0/1 CSR matrix, whose row ``i``
    lists the input rows of output row ``i`` in ascending order, with the (weighted) rows:
    scipy adds ``1.0 * x`` terms in that order, which is exact even where the compiler fuses
    the multiply and add. The columns go in blocks whose float64 copy and output fit in
    ``block_bytes`` besides the matrix (at least one column a block); a cell's terms never
    span blocks, so blocking changes no sum.

    Parameters
    ----------
    index : np.ndarray
        Output row of every input row, ``(R,)`` integers in ``0..n-1``.
    rows : np.ndarray
        ``(R, d)`` values (any real dtype; summed in float64).
    n : int
        Output rows.
    block_bytes : int, optional
        Temporary memory per block (default 64 MiB); one column may need more.
    weights : np.ndarray, optional
        ``(R,)`` float64 weight of each row; the rows are multiplied by it in float64.

    Returns
    -------
    np.ndarray
        ``(n, d)`` float64 sums.

    """
    n_rows, d = rows.shape
    out = np.empty((n, d))
    index = np.asarray(index, dtype=np.int64)
    # entry (index[r], r) for every input row; scipy keeps each CSR row's columns ascending
    gather = scipy.sparse.csr_array((np.ones(n_rows), (index, np.arange(n_rows))),
                                    shape=(n, n_rows))
    matrix_bytes = 32 * n_rows + 16 * (n + 1)  # the matrix and its COO temporaries
    width = max(1, min(d, (block_bytes - matrix_bytes) // max(8 * n_rows + 16 * n, 1)))
    for c0 in range(0, d, width):
        db = min(width, d - c0)
        block = (np.asarray(rows[:, c0:c0 + db], dtype=np.float64, order="C") if weights is None
                 else np.multiply(rows[:, c0:c0 + db], weights[:, None], dtype=np.float64))
        out[:, c0:c0 + db] = gather @ block
        del block  # freed before the next block's is made
    return out


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
        emb = row_sums(row_item, delta, n_items, weights=w)  # weighted block by block
        bias = np.bincount(row_item, weights=bias_delta * w, minlength=n_items)
        return ({"item_emb": emb.astype(np.float32), "item_bias": bias.astype(np.float32)},
                float(user_weight.sum()))
    items, inv = np.unique(row_item, return_inverse=True)
    emb = row_sums(inv, delta, len(items))
    bias = np.bincount(inv, weights=bias_delta, minlength=len(items))
    counts = np.bincount(inv, minlength=len(items))
    return ({"items": items.astype(np.int64), "item_emb": emb.astype(np.float32),
             "item_bias": bias.astype(np.float32), "counts": counts.astype(np.int64)}, 0.0)
