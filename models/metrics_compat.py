"""[compat] FedCIA's metric definitions (evaluation.md section 4), for side-by-side tables only.

Never report these as F1, NDCG or MRR: see evaluation.md sections 4 and 8.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from florec.models.ranking import check_k


def f1_of_means(means: dict[str, float], k: int) -> float:
    r"""FedCIA's F1: the harmonic mean of the **mean** precision and the **mean** recall.

    .. math:: F1_{of\,means}@K = \frac{2\,\bar P@K\,\bar R@K}{\bar P@K + \bar R@K},
        \qquad 0 \text{ when } \bar P@K + \bar R@K = 0

    [compat] It differs from FloRec's F1@K, the mean of per-user F1 (evaluation.md section 4
    example: 0.5405 against 0.5357). Report it as ``f1_of_means@K``, never as F1.

    Parameters
    ----------
    means : dict of str to float
        Pooled per-user means holding ``"precision@<k>"`` and ``"recall@<k>"`` (the output of
        :func:`finalize`).
    k : int
        Cut-off K.

    Returns
    -------
    float
        The value; NaN when the means are NaN (no evaluated user).

    Raises
    ------
    ValueError
        If ``means`` lacks precision or recall at ``k``.

    """
    k = check_k(k)
    missing = [key for key in (f"precision@{k}", f"recall@{k}") if key not in means]
    if missing:
        raise ValueError(f"means lack {missing[0]!r}; evaluate with k={k} in ks")
    p, r = float(means[f"precision@{k}"]), float(means[f"recall@{k}"])
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _fedcia_set_hits(topk: Iterable[int], truth: Iterable[int], k: int | None) -> list[int]:
    """1-based positions of the hits when the top-``k`` list is iterated **as a Python set**."""
    ids = topk.tolist() if hasattr(topk, "tolist") else list(topk)
    if ids and isinstance(ids[0], list):
        raise ValueError("topk must be one user's 1-D list of item ids")
    k = len(ids) if k is None else check_k(k)
    truth_set = {int(t) for t in (truth.tolist() if hasattr(truth, "tolist") else truth)}
    if not truth_set:
        raise ValueError("truth is empty; users without held-out items are not evaluated")
    listed = set(int(i) for i in ids[:k] if int(i) >= 0)  # -1 pads are not items
    return [pos for pos, item in enumerate(listed, start=1) if item in truth_set]


def fedcia_compat_ndcg(topk: Iterable[int], truth: Iterable[int], k: int | None = None) -> float:
    r"""Per-user "NDCG@K" as the FedCIA repository computes it (fedcia.md section 8.1).

    [compat] Only for reproducing FedCIA's numbers: it is **not** NDCG and is never reported as
    NDCG (report :func:`ndcg_at_k`). The top-K list is turned into a Python ``set``, so rank
    order is lost: position ``p`` is the place of an item in the set's iteration order (for
    item ids in CPython that is by id modulo the hash-table size, 32 slots for K=10, so roughly
    by id, not by score). And the ideal DCG sums over the ``h_u`` hits, not min(|T_u|, K):

    .. math::

        DCG^{set}_u = \sum_{p \in H_u} \frac{1}{\log_2(p + 1)}, \qquad
        IDCG^{set}_u = \sum_{j=1}^{h_u} \frac{1}{\log_2(j + 1)}, \qquad
        NDCG^{set}_u = \frac{DCG^{set}_u}{IDCG^{set}_u} \; (0 \text{ when } h_u = 0)

    with ``H_u`` the set positions of the hits and ``h_u = |H_u|``. So any user whose hits
    occupy the first set positions scores 1, however many held-out items were missed.

    Parameters
    ----------
    topk : iterable of int
        One user's ranked top-K item ids (e.g. a row of :func:`topk_items`; ``-1`` pads ignored).
    truth : iterable of int
        The user's held-out item ids (at least one).
    k : int, optional
        Cut-off; default the length of ``topk``.

    Returns
    -------
    float
        The per-user value in [0, 1]; average it over users with held-out items.

    """
    hits = _fedcia_set_hits(topk, truth, k)
    if not hits:
        return 0.0
    dcg = idcg = 0.0
    for j, pos in enumerate(hits, start=1):  # summed in the repository's order
        dcg += 1.0 / float(np.log2(pos + 1))
        idcg += 1.0 / float(np.log2(j + 1))
    return dcg / idcg


def fedcia_compat_mrr(topk: Iterable[int], truth: Iterable[int], k: int | None = None) -> float:
    r"""Per-user "MRR@K" as the FedCIA repository computes it (fedcia.md section 8.1).

    [compat] Only for reproducing FedCIA's numbers: it is **not** MRR and is never reported as
    MRR (report :func:`mrr_at_k`). The top-K list is iterated as a Python ``set`` (see
    :func:`fedcia_compat_ndcg`), so the "rank" is the set position of the first hit:

    .. math:: RR^{set}_u = \frac{1}{\min H_u}, \qquad 0 \text{ when } H_u = \emptyset

    (The repository returns 1/1e20 rather than 0 without a hit; the difference is below 1e-20.)

    Parameters
    ----------
    topk : iterable of int
        One user's ranked top-K item ids (``-1`` pads ignored).
    truth : iterable of int
        The user's held-out item ids (at least one).
    k : int, optional
        Cut-off; default the length of ``topk``.

    Returns
    -------
    float
        The per-user value in [0, 1]; average it over users with held-out items.

    """
    hits = _fedcia_set_hits(topk, truth, k)
    return 1.0 / hits[0] if hits else 0.0
