"""Negative sampling: uniform over the items a user has not interacted with."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def sample_negatives(users: np.ndarray, seen: sp.csr_matrix, uniforms: np.ndarray) -> np.ndarray:
    """Map uniform draws to items outside each user's seen set, exactly uniformly.

    For user u with sorted seen items s_0 < s_1 < ... and n items, a draw r in [0, n - |S_u|)
    is mapped to the r-th unseen item: ``r + #{k : s_k - k <= r}``. No rejection loop.

    Parameters
    ----------
    users : np.ndarray
        Row index into ``seen`` of each draw.
    seen : scipy.sparse.csr_matrix
        Binary user x item matrix with sorted indices (each row: the items to avoid).
    uniforms : np.ndarray
        Floats in [0, 1), one per draw (the caller owns the random stream).

    Returns
    -------
    np.ndarray
        int64 item ids, one per draw.

    """
    seen = seen.tocsr()
    if not seen.has_sorted_indices:
        seen.sort_indices()
    n_items = seen.shape[1]
    indptr = seen.indptr.astype(np.int64)
    degree = np.diff(indptr)
    if np.any(degree[users] >= n_items):
        raise ValueError("a user has interacted with every item: no negative exists")
    r = np.floor(uniforms * (n_items - degree[users])).astype(np.int64)
    row_of = np.repeat(np.arange(seen.shape[0], dtype=np.int64), degree)
    # per row, s_k - k is non-decreasing; offset rows by n_items to make one sorted key array
    shifted = seen.indices.astype(np.int64) - (np.arange(len(seen.indices)) - indptr[row_of])
    keys = row_of * (n_items + 1) + shifted
    below = np.searchsorted(keys, users * (n_items + 1) + r, side="right") - indptr[users]
    return r + below
