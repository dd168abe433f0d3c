r"""Exposure of target items: ER@K and mean rank, the metrics of promotion attacks.

Promotion attacks on federated recommenders (PipAttack, FedRecAttack, A-ra/A-hum) are measured
by the **exposure ratio** of their target items among the users who never interacted with them.
For a user ``u`` with candidate targets ``T_u`` (targets absent from ``u``'s train, validation
and test rows), ranked over all items with the user's seen items masked (the test-time mask of
:mod:`florec.models.metrics`: train and validation items; ties by item id, the same total order):

.. math::

    \mathrm{er}_u@K = \frac{|\{t \in T_u : \mathrm{rank}_u(t) \le K\}|}{|T_u|},\qquad
    \mathrm{trank}_u = \frac{1}{|T_u|} \sum_{t \in T_u} \mathrm{rank}_u(t)

with ``rank`` 1-based. Nodes return sums over their users and the count of users with a
non-empty ``T_u``, so the server pools them exactly like the accuracy sums: ER@K is the mean of
``er_u@K`` over those users (the papers' ER@K averages over (user, target) pairs; both agree
when every user has the same ``T_u``, the usual case for unpopular targets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from florec.recdata.seeds import stream

__all__ = ["EXPOSURE_PREFIX", "exposure_sums", "finalize_exposure", "parse_targets"]

#: metric-sum keys of this module start with it (``exposure/er@10``, ``exposure/num-users``)
EXPOSURE_PREFIX = "exposure/"


def parse_targets(spec: str, popularity: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """The target items named by ``attack-targets``.

    Parameters
    ----------
    spec : str
        ``unpopular:N`` (N items drawn by seed among the least popular 20% of the items with at
        least one training interaction) or comma-separated item ids.
    popularity : np.ndarray
        Training interactions per item (n_items,).
    seed, salt : int
        Key of the draw (``seed`` of the run, :class:`florec.recdata.seeds.Salt`).

    Returns
    -------
    np.ndarray
        Sorted unique int64 item ids.

    """
    from florec.recdata.errors import ConfigError

    n = len(popularity)
    if spec.startswith("unpopular:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"bad attack-targets '{spec}': use unpopular:N with N >= 1")
        seen = np.flatnonzero(popularity > 0)
        order = seen[np.lexsort((seen, popularity[seen]))]
        pool = order[: max(int(count), int(np.ceil(0.2 * len(order))))]
        rng = stream(seed, salt)
        return np.sort(rng.choice(pool, size=min(int(count), len(pool)), replace=False))
    try:
        items = np.unique(np.array([int(x) for x in spec.split(",")], dtype=np.int64))
    except ValueError:
        raise ConfigError(f"bad attack-targets '{spec}': use unpopular:N or item ids "
                          "like 3,17") from None
    if items.min() < 0 or items.max() >= n:
        raise ConfigError(f"attack-targets {spec} holds an id outside 0..{n - 1}")
    return items


def exposure_sums(score_fn: Callable[[torch.Tensor], torch.Tensor], users: np.ndarray,
                  mask: sp.csr_matrix, interacted: sp.csr_matrix, targets: np.ndarray,
                  ks: Sequence[int], chunk_size: int = 1024, device: str = "cpu"
                  ) -> dict[str, float]:
    """Sums of ``er_u@K`` and ``trank_u`` over ``users`` (see the module docstring).

    Parameters
    ----------
    score_fn : callable
        ``score_fn(user_ids)`` -> ``(B, n_items)`` scores (as for
        :func:`florec.models.metrics.evaluate_users`).
    users : np.ndarray
        Row indices of ``mask`` / ``interacted`` to evaluate.
    mask : scipy.sparse.csr_matrix
        Items hidden from each user's ranking (train and validation items).
    interacted : scipy.sparse.csr_matrix
        Every item each user interacted with (train, validation and test).
    targets : np.ndarray
        Target item ids.
    ks : sequence of int
        Cut-offs.
    chunk_size : int
        Users scored per call.
    device : str
        Device of the user-id tensor.

    Returns
    -------
    dict of str to float
        ``exposure/er@K`` sums, ``exposure/target-rank@all`` sum and ``exposure/num-users``.

    """
    targets = np.asarray(targets, dtype=np.int64)
    er = dict.fromkeys(ks, 0.0)
    rank_sum, counted = 0.0, 0
    for start in range(0, len(users), chunk_size):
        rows = np.asarray(users[start:start + chunk_size], dtype=np.int64)
        cand = ~(interacted[rows][:, targets].toarray() > 0)  # (B, T): never interacted
        keep = cand.any(axis=1)
        if not keep.any():
            continue
        rows, cand = rows[keep], cand[keep]
        scores = score_fn(torch.as_tensor(rows, device=device)).double().cpu()
        sub = mask[rows].tocoo()
        scores[torch.as_tensor(sub.row), torch.as_tensor(sub.col)] = -torch.inf
        t_scores = scores[:, targets]  # (B, T)
        above = (scores[:, None, :] > t_scores[:, :, None]).sum(-1)
        ids = torch.arange(scores.shape[1])
        tied_before = ((scores[:, None, :] == t_scores[:, :, None])
                       & (ids[None, None, :] < torch.as_tensor(targets)[None, :, None])).sum(-1)
        rank = (above + tied_before + 1).numpy().astype(np.float64)  # (B, T)
        n_cand = cand.sum(axis=1)
        for k in ks:
            er[k] += float(((rank <= k) & cand).sum(axis=1).__truediv__(n_cand).sum())
        rank_sum += float((np.where(cand, rank, 0.0).sum(axis=1) / n_cand).sum())
        counted += len(rows)
    out = {f"{EXPOSURE_PREFIX}er@{k}": v for k, v in er.items()}
    out[f"{EXPOSURE_PREFIX}target-rank@all"] = rank_sum
    out[f"{EXPOSURE_PREFIX}num-users"] = float(counted)
    return out


def finalize_exposure(pooled: dict[str, float]) -> dict[str, float]:
    """Per-user means of pooled :func:`exposure_sums` (empty if none were pooled)."""
    n = pooled.get(f"{EXPOSURE_PREFIX}num-users", 0.0)
    out = {key[len(EXPOSURE_PREFIX):]: (value / n if n > 0 else float("nan"))
           for key, value in pooled.items()
           if key.startswith(EXPOSURE_PREFIX) and not key.endswith("num-users")}
    return out | ({"exposure-users": n} if f"{EXPOSURE_PREFIX}num-users" in pooled else {})
