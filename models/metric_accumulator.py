"""Per-metric sums of ranked users, and the held-out truth they are matched against.

:class:`Accumulator` keeps the sums order-independent: exact integer counts for precision and
hit rate, correctly rounded totals (``math.fsum``) of per-user values for the others, so the
sums do not depend on how users were chunked or pooled (evaluation.md sections 3-5).
"""

from __future__ import annotations

import math

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
from florec.models.ranking import ranked_topk

METRIC_NAMES = ("precision", "recall", "hr", "f1", "ndcg", "mrr")
#: Per-user popularity metrics, computed when the item popularity is given (pooled like the
#: accuracy metrics: per-user sums, divided by ``num-users``).
POPULARITY_METRICS = ("arp",)
#: Catalogue-level metrics: not per-user, so not poolable by summing (central evaluation only).
CATALOGUE_METRICS = ("coverage",)

NUM_USERS = "num-users"
BOUNDARY_TIES = "boundary-ties"

# Metrics whose per-user values are integers divided by a constant: their sums are kept as exact
# integer counts (hits for precision, users with a hit for hr).
_COUNT_METRICS = ("precision", "hr")
# Metrics whose per-user values are real numbers: their sums are the correctly rounded sum
# (math.fsum) over all users, so they do not depend on how users were chunked.
_REAL_METRICS = ("recall", "f1", "ndcg", "mrr")


def canonical_csr(m: sp.spmatrix, n_cols: int | None, name: str) -> sp.csr_matrix:
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


def truth_from_list(truth: list, n_cols: int) -> sp.csr_matrix:
    """A ``(len(truth), n_cols)`` 0/1 CSR from per-user arrays of item ids (duplicates once)."""
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


class Accumulator:
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
        ids, vals = ranked_topk(scores, kmax)
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
        """The sums so far: ``"<metric>@<k>"``, ``"num-users"``, ``"boundary-ties@<k>"``."""
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
            out[f"{BOUNDARY_TIES}@{k}"] = float(self.ties[k])
        return out
