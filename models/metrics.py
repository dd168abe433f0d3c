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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.metric_formulas import (
    arp_at_k,
    covered_items,
    f1_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

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

METRIC_NAMES = ("precision", "recall", "hr", "f1", "ndcg", "mrr")
#: Per-user popularity metrics, computed when the item popularity is given (pooled like the
#: accuracy metrics: per-user sums, divided by ``num-users``).
POPULARITY_METRICS = ("arp",)
#: Catalogue-level metrics: not per-user, so not poolable by summing (central evaluation only).
CATALOGUE_METRICS = ("coverage",)

NUM_USERS = "num-users"
_TIES = "boundary-ties"
_TIE_RATE = "boundary-tie-rate"

# Metrics whose per-user values are integers divided by a constant: their sums are kept as exact
# integer counts (hits for precision, users with a hit for hr).
_COUNT_METRICS = ("precision", "hr")
# Metrics whose per-user values are real numbers: their sums are the correctly rounded sum
# (math.fsum) over all users, so they do not depend on how users were chunked.
_REAL_METRICS = ("recall", "f1", "ndcg", "mrr")



# --------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
    """Validate ``(B, n)`` scores and return them as floats (no copy for float32/64)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (batch, n_items), got {tuple(scores.shape)}")
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact, keeps every comparison and tie
    elif not scores.is_floating_point():
        if scores.is_complex():
            raise TypeError("complex scores cannot be ranked")
        scores = scores.double()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; a NaN score is an error, not a low score")
    return scores


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = [int(ks)]
    out = sorted({_check_k(k, "each k in ks") for k in ks})
    if not out:
        raise ValueError("ks must hold at least one cut-off")
    return out


def _ranked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k ids and the sorted top-(k+1) values of validated float scores.

    Returns ``ids`` ``(B, k)`` int64 (``-1`` pads) in the total order, and ``vals``
    ``(B, min(k + 1, n))``: the largest scores of each row, descending.
    """
    n_rows, n = scores.shape
    dev = scores.device
    ids = torch.full((n_rows, k), -1, dtype=torch.int64, device=dev)
    if n_rows == 0 or n == 0:
        return ids, scores.new_empty((n_rows, 0))

    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    kt = min(k, n)
    top_vals, top_idx = vals[:, :kt], idx[:, :kt]
    # The topk set is exact unless the k-th score is tied with the (k+1)-th one (a boundary tie):
    # then which tied items topk returned is unspecified and must be redone in id order.
    if kt < kk:
        kth = vals[:, kt - 1]
        fix = torch.nonzero((vals[:, kt] == kth) & (kth > -math.inf)).squeeze(1)
        if fix.numel() > 0:
            top_idx = top_idx.clone()
            top_idx[fix] = _fill_boundary_ties(scores[fix], top_vals[fix], top_idx[fix], kth[fix])
    # Masked (-inf) items are never listed: they become -1 pads.
    top_idx = torch.where(top_vals > -math.inf, top_idx, torch.full_like(top_idx, -1))

    # Order the exact set: id ascending, then a stable sort by score descending.
    key = torch.where(top_idx < 0, torch.full_like(top_idx, n), top_idx)
    order = torch.argsort(key, dim=1)
    top_idx = torch.gather(top_idx, 1, order)
    s = torch.gather(scores, 1, top_idx.clamp(min=0))
    s = torch.where(top_idx < 0, torch.full_like(s, -math.inf), s)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    ids[:, :kt] = torch.gather(top_idx, 1, order)
    return ids, vals


def _fill_boundary_ties(
    scores: torch.Tensor, top_vals: torch.Tensor, top_idx: torch.Tensor, kth: torch.Tensor
) -> torch.Tensor:
    """Redo the top-k set of rows whose k-th score is tied with the (k+1)-th one.

    The set is all items strictly above the k-th score (fewer than k, and the leading entries of
    the sorted topk output), then the items equal to it in ascending id order.
    """
    n_rows, n = scores.shape
    k = top_idx.shape[1]
    n_above = (top_vals > kth[:, None]).sum(1)
    key_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    rev_id = torch.arange(n, 0, -1, dtype=key_dtype, device=scores.device)  # smaller id, larger key
    key = torch.where(scores == kth[:, None], rev_id, torch.zeros((), dtype=key_dtype))
    tied = torch.topk(key, k, dim=1, largest=True, sorted=True).indices  # tied ids, ascending
    pos = torch.arange(k, device=scores.device).expand(n_rows, k)
    take_tied = pos >= n_above[:, None]
    from_tied = torch.gather(tied, 1, (pos - n_above[:, None]).clamp(min=0))
    return torch.where(take_tied, from_tied, top_idx)


def topk_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` item ids of each row in FloRec's total order.

    The order is score descending, then item id ascending: the same list as the first ``k``
    entries of ``torch.sort(scores, descending=True, stable=True)``, without the full sort.
    Items scored ``-inf`` (masked) are never listed.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, n_items)`` scores, masked items at ``-inf``. Must not contain NaN.
    k : int
        List length, at least 1.

    Returns
    -------
    torch.Tensor
        ``(B, k)`` int64 item ids, on the device of ``scores``; ``-1`` fills the places beyond the
        number of finite candidates.

    Raises
    ------
    ValueError
        If ``scores`` contains NaN, is not 2-D, or ``k`` is not a positive integer.

    """
    k = _check_k(k)
    ids, _ = _ranked_topk(_check_scores(scores), k)
    return ids


# --------------------------------------------------------------------------------------------------
# Truth handling
# --------------------------------------------------------------------------------------------------


def _canonical_csr(m, n_cols: int | None, name: str) -> sp.csr_matrix:
    """CSR with sorted, unique column indices and only nonzero stored entries (copy if needed)."""
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(m).__name__}")
    m = sp.csr_matrix(m)  # no copy when already a csr_matrix
    if n_cols is not None and m.shape[1] != n_cols:
        raise ValueError(f"{name} has {m.shape[1]} columns but scores have {n_cols} items")
    if not m.has_canonical_format or (m.data.size and not np.all(m.data != 0)):
        m = m.copy()
        m.sum_duplicates()
        m.eliminate_zeros()
    return m


def _truth_from_list(truth: list, n_cols: int) -> sp.csr_matrix:
    rows = []
    for i, t in enumerate(truth):
        a = np.unique(np.asarray(t, dtype=np.int64).reshape(-1))
        if a.size and (a[0] < 0 or a[-1] >= n_cols):
            raise ValueError(f"truth[{i}] holds item ids outside [0, {n_cols})")
        rows.append(a)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([r.size for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    data = np.ones(indices.size, dtype=np.int8)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols))


def _hits(ids: torch.Tensor, truth: sp.csr_matrix) -> torch.Tensor:
    """``hits[u, r] = ids[u, r] in T_u`` by binary search in the sorted (row, item) keys."""
    n_rows, n = truth.shape
    if truth.nnz == 0:
        return torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    counts = np.diff(truth.indptr)
    keys = np.repeat(np.arange(n_rows, dtype=np.int64), counts) * n + truth.indices
    keys_t = torch.from_numpy(keys).to(ids.device)  # sorted: canonical csr
    row = torch.arange(n_rows, device=ids.device, dtype=torch.int64)[:, None]
    query = row * n + ids.clamp(min=0)
    pos = torch.searchsorted(keys_t, query.reshape(-1)).clamp(max=keys_t.numel() - 1)
    found = (keys_t[pos] == query.reshape(-1)).reshape(ids.shape)
    return found & (ids >= 0)


# --------------------------------------------------------------------------------------------------
# Sums
# --------------------------------------------------------------------------------------------------


class _Accumulator:
    """Order-independent sums: exact integer counts, and math.fsum over per-user values."""

    def __init__(self, ks: list[int], item_pop: torch.Tensor | None = None,
                 coverage: bool = False):
        self.ks = ks
        self.item_pop = item_pop
        self.covered: dict[int, torch.Tensor] = {}
        self.coverage = coverage
        self.num_users = 0
        self.counts = {f"{m}@{k}": 0 for m in _COUNT_METRICS for k in ks}
        self.ties = {k: 0 for k in ks}
        self.values: dict[str, list[np.ndarray]] = {
            f"{m}@{k}": [] for m in _REAL_METRICS for k in ks
        }

    def add(self, scores: torch.Tensor, truth: sp.csr_matrix) -> None:
        """Add a chunk: validated float ``scores`` (B, n) and canonical ``truth`` (B, n) CSR."""
        n_truth_np = np.diff(truth.indptr)
        keep_np = n_truth_np > 0
        if not keep_np.any():
            return
        if not keep_np.all():
            rows = np.flatnonzero(keep_np)
            scores = scores[torch.from_numpy(rows).to(scores.device)]
            truth = truth[rows]
            n_truth_np = n_truth_np[rows]
        kmax = self.ks[-1]
        ids, vals = _ranked_topk(scores, kmax)
        hits = _hits(ids, truth)
        n_truth = torch.from_numpy(n_truth_np.astype(np.int64)).to(scores.device)
        self.num_users += int(scores.shape[0])
        n_items = scores.shape[1]
        if self.item_pop is not None:
            pop = self.item_pop.to(ids.device)
            for k in self.ks:
                self.values.setdefault(f"arp@{k}", []).append(arp_at_k(ids, pop, k).cpu().numpy())
        if self.coverage:
            for k in self.ks:
                cov = covered_items(ids, n_items, k)
                self.covered[k] = cov if k not in self.covered else self.covered[k] | cov
        for k in self.ks:
            h = hits[:, :k].sum(1)
            self.counts[f"precision@{k}"] += int(h.sum())
            self.counts[f"hr@{k}"] += int((h > 0).sum())
            for name, v in (
                ("recall", recall_at_k(hits, n_truth, k)),
                ("f1", f1_at_k(hits, n_truth, k)),
                ("ndcg", ndcg_at_k(hits, n_truth, k)),
                ("mrr", mrr_at_k(hits, k)),
            ):
                self.values[f"{name}@{k}"].append(v.cpu().numpy())
            if k < n_items:
                kth = vals[:, k - 1]
                self.ties[k] += int(((kth == vals[:, k]) & (kth > -math.inf)).sum())

    def sums(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in METRIC_NAMES:
            for k in self.ks:
                key = f"{m}@{k}"
                if m == "precision":
                    out[key] = self.counts[key] / k  # sum_u h_u / K, correctly rounded
                elif m == "hr":
                    out[key] = float(self.counts[key])
                else:
                    vs = self.values[key]
                    out[key] = math.fsum(np.concatenate(vs).tolist()) if vs else 0.0
        if self.item_pop is not None:
            for k in self.ks:
                vs = self.values.get(f"arp@{k}", [])
                out[f"arp@{k}"] = math.fsum(np.concatenate(vs).tolist()) if vs else 0.0
        if self.coverage:
            for k in self.ks:
                cov = self.covered.get(k)
                out[f"coverage@{k}"] = float(cov.sum()) / cov.numel() if cov is not None else 0.0
        out[NUM_USERS] = float(self.num_users)
        for k in self.ks:
            out[f"{_TIES}@{k}"] = float(self.ties[k])
        return out


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
    ks = _check_ks(ks)
    scores = _check_scores(scores)
    n_rows, n_items = scores.shape
    if isinstance(truth, (list, tuple)):
        truth = _truth_from_list(list(truth), n_items)
    else:
        truth = _canonical_csr(truth, n_items, "truth")
    if truth.shape[0] != n_rows:
        raise ValueError(f"truth has {truth.shape[0]} rows but scores have {n_rows}")
    acc = _Accumulator(ks)
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
    ks = _check_ks(ks)
    chunk_size = _check_k(chunk_size, "chunk_size")
    truth = _canonical_csr(truth, None, "truth")
    n_users, n_items = truth.shape
    if mask is not None:
        mask = _canonical_csr(mask, n_items, "mask")
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

    acc = _Accumulator(ks, pop_t, coverage)
    with torch.no_grad():
        for start in range(0, users.size, chunk_size):
            u = users[start : start + chunk_size]
            raw = score_fn(torch.from_numpy(u).to(device))
            if not isinstance(raw, torch.Tensor) or tuple(raw.shape) != (u.size, n_items):
                shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                raise ValueError(f"score_fn returned {shape}, expected ({u.size}, {n_items})")
            scores = _check_scores(raw)
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


# --------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------


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
        elif name == _TIES:
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
