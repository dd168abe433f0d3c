"""A FedAvg node's upload when the server runs a user-level defense: one row per (user, item).

A node normally pre-sums its users' item-row changes (:mod:`florec.protocol.fedavg_upload`), so
the server never sees one user's update. The user-level defenses of
:mod:`florec.strategies.robust` (norm bounding of each user's update, coordinate-wise median and
trimmed mean over the users that touched an item row) need each user's rows, so with
``defense`` in :data:`USER_DEFENSES` the node uploads them unsummed:

- ``users`` (R,): the row's user, as an index ``0..U-1`` local to this reply (no global id);
- ``items`` (R,), ``item_emb`` (R, d), ``item_bias`` (R,): the row's item and change;
- ``user_weight`` (U,): each user's FedAvg weight (dense aggregation).

This costs more bytes than the pre-summed sparse upload (rows repeated per user instead of once
per item; counted in ``bytes_up``) and reveals each user's rows to the server: the price of a
server-side user-level defense.

Per-user clipping (:func:`user_norms`, :func:`clip_user_updates`) lives here too: a DP node
clips its users before it pre-sums (:mod:`florec.client.trainers.dp_clip`) and the norm-bound
defense clips the per-user rows at the server (:mod:`florec.strategies.robust`), with one rule.
"""

from __future__ import annotations

import numpy as np

from florec.protocol.fedavg_upload import node_payload

#: defenses that need per-user rows
USER_DEFENSES = ("norm-bound", "median", "trimmed-mean")
#: the arrays of one upload
KEYS = ("users", "items", "item_emb", "item_bias", "user_weight")


def user_rows_payload(row_user: np.ndarray, row_item: np.ndarray, delta: np.ndarray,
                      bias_delta: np.ndarray, user_weight: np.ndarray
                      ) -> tuple[dict[str, np.ndarray], float]:
    """A node's per-user upload (users re-indexed by first appearance; weight-0 users dropped).

    Parameters
    ----------
    row_user, row_item : np.ndarray
        Owner (bucket-local user index) and item of each changed row.
    delta, bias_delta : np.ndarray
        Row changes (R, d) and (R,).
    user_weight : np.ndarray
        Weight of each bucket user.

    Returns
    -------
    (dict, float)
        The arrays to upload and the node's total weight.

    """
    row_user = np.asarray(row_user, dtype=np.int64)
    keep = user_weight[row_user] > 0
    owners, local = np.unique(row_user[keep], return_inverse=True)
    return ({"users": local.astype(np.int64), "items": row_item[keep].astype(np.int64),
             "item_emb": delta[keep].astype(np.float32),
             "item_bias": bias_delta[keep].astype(np.float32),
             "user_weight": user_weight[owners].astype(np.float64)},
            float(user_weight.sum()))


def fedavg_upload(defense: str, mode: str, n_items: int, row_user: np.ndarray,
                  row_item: np.ndarray, delta: np.ndarray, bias_delta: np.ndarray,
                  user_weight: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """A FedAvg node's upload: per-user rows under a user-level ``defense``, else pre-summed.

    The pre-summed upload is :func:`florec.protocol.fedavg_upload.node_payload` of ``mode``;
    the other arguments are as there.
    """
    if defense in USER_DEFENSES:
        return user_rows_payload(row_user, row_item, delta, bias_delta, user_weight)
    return node_payload(mode, n_items, row_user, row_item, delta, bias_delta, user_weight)


def user_norms(row_user: np.ndarray, delta: np.ndarray, bias_delta: np.ndarray,
               n_users: int) -> np.ndarray:
    r"""Each user's L2 norm of its whole item update.

    :math:`\lVert \Delta_u \rVert = \sqrt{\sum_{r: user(r) = u} \lVert \Delta V_r \rVert^2
    + \Delta b_r^2}` over the rows ``r`` (items) the user changed.

    Parameters
    ----------
    row_user : np.ndarray
        Owner (local user index) of each changed row.
    delta, bias_delta : np.ndarray
        Row changes ``(rows, d)`` and ``(rows,)``.
    n_users : int
        Number of local users (the output's length).

    Returns
    -------
    np.ndarray
        float64 norms, 0 for users without rows.

    """
    sq = (np.asarray(delta, np.float64) ** 2).sum(axis=1) + np.asarray(bias_delta,
                                                                         np.float64) ** 2
    return np.sqrt(np.bincount(row_user, weights=sq, minlength=n_users))


def clip_user_updates(row_user: np.ndarray, delta: np.ndarray, bias_delta: np.ndarray,
                      clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Scale every user's item update to L2 norm at most ``clip``.

    :math:`\Delta_u \leftarrow \Delta_u \cdot \min(1, C / \lVert \Delta_u \rVert)` with the
    norm of :func:`user_norms` (embedding and bias rows together).

    Parameters
    ----------
    row_user : np.ndarray
        Owner (local user index) of each changed row.
    delta, bias_delta : np.ndarray
        Row changes ``(rows, d)`` and ``(rows,)``.
    clip : float
        ``C`` > 0.

    Returns
    -------
    (np.ndarray, np.ndarray, np.ndarray)
        Clipped ``delta`` (float32), clipped ``bias_delta`` (float32) and each user's norm
        before clipping.

    """
    if clip <= 0:
        raise ValueError(f"clip bound {clip} must be > 0 (dp-clip, defense-norm)")
    n = int(row_user.max(initial=-1)) + 1
    norms = user_norms(row_user, delta, bias_delta, n)
    # a clipped user lands a few float32 ulps inside C (rounding must not push it past C)
    shrink = 1.0 - 4 * np.finfo(np.float32).eps
    scale = np.where(norms > clip, clip / np.maximum(norms, 1e-300) * shrink, 1.0)[row_user]
    return ((np.asarray(delta, np.float64) * scale[:, None]).astype(np.float32),
            (np.asarray(bias_delta, np.float64) * scale).astype(np.float32), norms)
