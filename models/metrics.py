"""Full-ranking top-K metrics for implicit feedback (evaluation.md sections 2-5).

Every user is ranked against **all** catalogue items. Masked items (the user's train items, plus
the validation items at test time) carry the score ``-inf`` and are never listed. A NaN score is an
error.
Items are ordered by score descending, then by internal item id ascending; this total order makes
every result independent of batch size, chunking and device.

Per-user metrics (binary relevance, ``T_u`` the held-out items, ``h_u`` the hits in the top-K list):
precision, recall, hit rate, F1, NDCG and MRR at K, see :data:`METRIC_NAMES`. Users with no held-out
item are skipped. Evaluation returns per-metric **sums** over the evaluated users plus
``num-users`` so that federated clients can be pooled exactly: add the sums of all clients with
:func:`add_sums`, then divide once with :func:`finalize`.

Keys of a sums dictionary, for each ``k`` in ``ks``: ``"<metric>@<k>"`` for each metric name,
``"num-users"`` and ``"boundary-ties@<k>"`` (the number of evaluated users whose K-th and (K+1)-th
scores are equal, both finite).

The top-K lists come from :mod:`florec.models.ranking`, the per-user sums from
:mod:`florec.models.metric_accumulator`; this module evaluates users and pools their sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.metric_accumulator import (
    BOUNDARY_TIES,
    CATALOGUE_METRICS,
    METRIC_NAMES,
    NUM_USERS,
    POPULARITY_METRICS,
    Accumulator,
    canonical_csr,
    truth_from_list,
)
from florec.models.ranking import check_k, check_ks, check_scores, topk_items

__all__ = [
    "CATALOGUE_METRICS",
    "METRIC_NAMES",
    "POPULARITY_METRICS",
    "add_sums",
    "evaluate_users",
    "finalize",
    "ranking_metric_sums",
    "topk_items",
]

_TIE_RATE = "boundary-tie-rate"


def ranking_metric_sums(
    scores: torch.Tensor,
    truth: sp.csr_matrix | list[np.ndarray],
    ks: Sequence[int],
) -> dict[str, float]:
    """Per-metric sums over the users of one batch of already-masked scores.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, n_items)`` scores, masked items at ``-inf``. Not modified.
    truth : scipy.sparse.csr_matrix or list of np.ndarray
        Held-out items of the same ``B`` users: a ``(B, n_items)`` sparse matrix whose nonzero
        entries are the truth, or ``B`` arrays of item ids (duplicates count once).
    ks : sequence of int
        Cut-offs; all are computed from one top-``max(ks)`` list.

    Returns
    -------
    dict of str to float
        ``"<metric>@<k>"`` sums over the evaluated users (those with at least one held-out item),
        ``"num-users"`` and ``"boundary-ties@<k>"``. Sums are exact counts or correctly rounded
        (``math.fsum``) totals, so they do not depend on the order of users.

    Raises
    ------
    ValueError
        If ``scores`` contains NaN, or shapes do not match.

    """
    ks = check_ks(ks)
    scores = check_scores(scores)
    n_rows, n_items = scores.shape
    if isinstance(truth, (list, tuple)):
        truth = truth_from_list(list(truth), n_items)
    else:
        truth = canonical_csr(truth, n_items, "truth")
    if truth.shape[0] != n_rows:
        raise ValueError(f"truth has {truth.shape[0]} rows but scores have {n_rows}")
    acc = Accumulator(ks)
    with torch.no_grad():
        acc.add(scores, truth)
    return acc.sums()


def _check_users(users: np.ndarray, n_users: int) -> np.ndarray:
    users = np.asarray(users)
    if users.ndim != 1:
        raise ValueError("users must be a 1-D array of user ids")
    if users.size == 0:
        return users.astype(np.int64)
    if not np.issubdtype(users.dtype, np.integer):
        raise ValueError(f"users must hold integer ids, got dtype {users.dtype}")
    users = users.astype(np.int64)
    if users.min() < 0 or users.max() >= n_users:
        raise ValueError(f"user ids must lie in [0, {n_users})")
    if np.unique(users).size != users.size:
        raise ValueError("users holds duplicate ids; every evaluated user counts once")
    return users


def evaluate_users(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    users: np.ndarray,
    mask: sp.csr_matrix | None,
    truth: sp.csr_matrix,
    ks: Sequence[int] = (10, 20),
    chunk_size: int = 1024,
    device: str | torch.device = "cpu",
    item_pop: np.ndarray | torch.Tensor | None = None,
    coverage: bool = False,
) -> dict[str, float]:
    """Full-ranking evaluation of ``users``, chunked, returning per-metric sums.

    For each chunk of at most ``chunk_size`` users that have held-out items, ``score_fn`` scores all
    items, the user's ``mask`` row is set to ``-inf`` (on a copy, the output of ``score_fn`` is not
    modified), and the top-``max(ks)`` list is matched against the ``truth`` row. Memory stays at
    ``chunk_size x n_items`` scores. Users whose truth row is empty are skipped without scoring.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(user_ids)`` with ``user_ids`` a 1-D int64 tensor on ``device`` returns
        ``(len(user_ids), n_items)`` scores. Called under ``torch.no_grad()``.
    users : np.ndarray
        1-D unique integer user ids to evaluate (e.g. a client's users).
    mask : scipy.sparse.csr_matrix or None
        ``(n_users, n_items)`` nonzero entries are the masked items of each user (train items for
        validation; train and validation items for test). ``None`` masks nothing (only for
        protocols that declare ``mask_history=false``).
    truth : scipy.sparse.csr_matrix
        ``(n_users, n_items)`` nonzero entries are each user's held-out items.
    ks : sequence of int
        Cut-offs, default ``(10, 20)``.
    chunk_size : int
        Users scored per call of ``score_fn``.
    device : str or torch.device
        Device of the user-id tensor passed to ``score_fn``; ranking runs where the scores are.
    item_pop : array-like, optional
        ``(n_items,)`` item popularity (train counts). When given, ``arp@<k>`` per-user sums
        are added (see :func:`florec.models.metric_formulas.arp_at_k`); they pool like the others.
    coverage : bool
        Add ``coverage@<k>``: the share of the catalogue in at least one evaluated user's list.
        It is a catalogue-level value of **this call**, not a per-user sum: it cannot be pooled
        over clients and :func:`finalize` passes it through unchanged (central evaluation only).

    Returns
    -------
    dict of str to float
        Same keys as :func:`ranking_metric_sums` (plus ``arp@<k>`` / ``coverage@<k>`` when
        asked for). Identical for any ``chunk_size`` and any order of
        ``users``. ``num-users`` is 0 (and all sums 0) when no user has a held-out item.

    Raises
    ------
    ValueError
        If a score is NaN (checked before masking), shapes do not match, or ``users`` is invalid.

    """
    ks = check_ks(ks)
    chunk_size = check_k(chunk_size, "chunk_size")
    truth = canonical_csr(truth, None, "truth")
    n_users, n_items = truth.shape
    if mask is not None:
        mask = canonical_csr(mask, n_items, "mask")
        if mask.shape[0] != n_users:
            raise ValueError(f"mask has {mask.shape[0]} rows but truth has {n_users}")
    users = _check_users(users, n_users)
    users = users[np.diff(truth.indptr)[users] > 0]
    device = torch.device(device)
    pop_t = None
    if item_pop is not None:
        pop_t = torch.as_tensor(np.asarray(item_pop, dtype=np.float64)
                                if not isinstance(item_pop, torch.Tensor) else item_pop)
        if pop_t.shape != (n_items,):
            raise ValueError(f"item_pop has shape {tuple(pop_t.shape)}, expected ({n_items},)")

    acc = Accumulator(ks, pop_t, coverage)
    with torch.no_grad():
        for start in range(0, users.size, chunk_size):
            u = users[start : start + chunk_size]
            raw = score_fn(torch.from_numpy(u).to(device))
            if not isinstance(raw, torch.Tensor) or tuple(raw.shape) != (u.size, n_items):
                shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                raise ValueError(f"score_fn returned {shape}, expected ({u.size}, {n_items})")
            scores = check_scores(raw)
            if mask is not None:
                m = mask[u]
                if m.nnz:
                    rows = np.repeat(np.arange(u.size, dtype=np.int64), np.diff(m.indptr))
                    index = (
                        torch.from_numpy(rows).to(scores.device),
                        torch.from_numpy(m.indices.astype(np.int64)).to(scores.device),
                    )
                    fill = torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device)
                    if scores is raw:
                        scores = scores.index_put(index, fill)  # out of place: raw is the caller's
                    else:
                        scores.index_put_(index, fill)
            acc.add(scores, truth[u])
    return acc.sums()


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Pool two sums dictionaries (e.g. of two clients) key by key.

    An empty dictionary is the identity, so ``functools.reduce(add_sums, parts, {})`` pools any
    number of clients.

    Raises
    ------
    ValueError
        If both are non-empty and their keys differ (e.g. different ``ks``).

    """
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    if set(a) != set(b):
        raise ValueError(f"cannot pool sums with different keys: {sorted(set(a) ^ set(b))}")
    return {key: float(a[key]) + float(b[key]) for key in a}


def finalize(sums: dict[str, float]) -> dict[str, float]:
    r"""Turn pooled sums into per-user means.

    .. math:: \bar m@K = \frac{\sum_u m_u@K}{N}, \qquad N = \text{num-users}

    Every evaluated user counts once (no weighting by interactions or client size).

    Parameters
    ----------
    sums : dict of str to float
        Output of :func:`ranking_metric_sums`, :func:`evaluate_users` or :func:`add_sums`.

    Returns
    -------
    dict of str to float
        ``"<metric>@<k>"`` means for the names in :data:`METRIC_NAMES` and
        :data:`POPULARITY_METRICS`, ``coverage@<k>`` unchanged, ``"num-users"`` and
        ``"boundary-tie-rate@<k>"`` (share of users whose K-th and (K+1)-th scores are equal).
        Other keys are dropped. Means are NaN when ``num-users`` is 0.

    """
    if NUM_USERS not in sums:
        raise ValueError("sums lack 'num-users'")
    n = float(sums[NUM_USERS])
    out: dict[str, float] = {}
    for key, value in sums.items():
        name, sep, k = key.partition("@")
        if not sep:
            continue
        if name in METRIC_NAMES or name in POPULARITY_METRICS:
            out[key] = float(value) / n if n > 0 else math.nan
        elif name in CATALOGUE_METRICS:
            out[key] = float(value)
        elif name == BOUNDARY_TIES:
            out[f"{_TIE_RATE}@{k}"] = float(value) / n if n > 0 else math.nan
    out[NUM_USERS] = n
    return out


def split_metrics(pooled: dict[str, float], part: str) -> dict[str, float]:
    """Means of one split from sums keyed ``<part>/<metric>`` (e.g. ``valid/ndcg@10``).

    Returns an empty dict when the sums hold no ``<part>/num-users`` (nothing was evaluated).
    """
    prefix = f"{part}/"
    if f"{prefix}num-users" not in pooled:
        return {}
    return finalize({k[len(prefix):]: v for k, v in pooled.items() if k.startswith(prefix)})
