"""Per-user top-K metric formulas (binary relevance), evaluation.md section 4.

``hits`` is a (users, K) 0/1 tensor in rank order; ``n_truth`` the users' held-out counts.
"""

from __future__ import annotations

import torch


def precision_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user Precision@K.

    .. math:: P_u@K = \frac{h_u}{K}, \qquad h_u = \sum_{r=1}^{K} rel_u(r)

    The denominator is always K, even when fewer than K candidates remain.

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool, ``hits[u, r-1] = rel_u(r)`` along the ranked list.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64.

    """
    return hits[:, :k].sum(1, dtype=torch.float64) / k


def recall_at_k(hits: torch.Tensor, n_truth: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user Recall@K.

    .. math:: R_u@K = \frac{h_u}{|T_u|}

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool relevance along the ranked list.
    n_truth : torch.Tensor
        ``(B,)`` ``|T_u|``, at least 1.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64.

    """
    return hits[:, :k].sum(1, dtype=torch.float64) / n_truth.to(torch.float64)


def hr_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user hit rate HR@K.

    .. math:: HR_u@K = \mathbb{1}[h_u \geq 1]

    Under leave-one-out (one held-out item) this equals Recall@K. It is **not** the micro-averaged
    "total hits / total test items" some papers call HR.

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool relevance along the ranked list.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64 of 0 and 1.

    """
    return hits[:, :k].any(1).to(torch.float64)


def f1_at_k(hits: torch.Tensor, n_truth: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user F1@K (the mean of these is FloRec's F1; ``f1_of_means`` is a different metric).

    .. math::

        F1_u@K = \frac{2 P_u R_u}{P_u + R_u} = \frac{2 h_u}{K + |T_u|}, \qquad
        F1_u@K = 0 \text{ when } h_u = 0

    The right-hand form is algebraically equal (substitute ``P = h/K``, ``R = h/|T|``) and is
    computed with one rounding only.

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool relevance along the ranked list.
    n_truth : torch.Tensor
        ``(B,)`` ``|T_u|``, at least 1.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64.

    """
    h = hits[:, :k].sum(1, dtype=torch.float64)
    return 2.0 * h / (k + n_truth.to(torch.float64))


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """``1 / log2(r + 1)`` for r = 1..k, float64."""
    r = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    return 1.0 / torch.log2(r + 1.0)


def ndcg_at_k(hits: torch.Tensor, n_truth: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user NDCG@K with binary gains.

    .. math::

        DCG_u@K = \sum_{r=1}^{K} \frac{rel_u(r)}{\log_2(r+1)}, \qquad
        IDCG_u@K = \sum_{r=1}^{\min(|T_u|, K)} \frac{1}{\log_2(r+1)}, \qquad
        NDCG_u@K = \frac{DCG_u@K}{IDCG_u@K}

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool relevance along the ranked list.
    n_truth : torch.Tensor
        ``(B,)`` ``|T_u|``, at least 1.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64 in [0, 1].

    """
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].to(torch.float64) * disc).sum(1)
    ideal = torch.cumsum(disc, 0)
    idx = n_truth.to(device=hits.device, dtype=torch.int64).clamp(min=1, max=k) - 1
    return dcg / ideal[idx]


def mrr_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user reciprocal rank, cut at K.

    .. math::

        RR_u@K = \frac{1}{r^*_u}, \quad r^*_u = \min\{r \leq K : rel_u(r) = 1\}, \qquad
        RR_u@K = 0 \text{ if no such } r

    Parameters
    ----------
    hits : torch.Tensor
        ``(B, >=K)`` bool relevance along the ranked list.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64 in [0, 1].

    """
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=hits.device)
    # 1/r decreases with r, so the maximum of rel(r)/r sits at the first hit.
    return (hits[:, :k].to(torch.float64) / ranks).max(1).values


def arp_at_k(ids: torch.Tensor, item_pop: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-user average recommendation popularity ARP@K (Fair Sampling, evaluation.md section 4).

    .. math:: ARP_u@K = \frac{1}{K}\sum_{i \in L_u} pop_i

    ``pop_i`` is the item's train count and ``L_u`` the user's top-K list; places without a
    candidate (``-1`` pads) add 0 and the divisor stays K. The Fair Sampling repository reports
    the sum, ``K * ARP@K``.

    Parameters
    ----------
    ids : torch.Tensor
        ``(B, >=K)`` int64 ranked item ids, ``-1`` for empty places.
    item_pop : torch.Tensor
        ``(n_items,)`` popularity, on the device of ``ids``.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64.

    """
    top = ids[:, :k]
    pop = item_pop.to(torch.float64)[top.clamp(min=0)]
    return torch.where(top >= 0, pop, torch.zeros_like(pop)).sum(1) / k


def covered_items(ids: torch.Tensor, n_items: int, k: int) -> torch.Tensor:
    r"""Which items appear in at least one user's top-K list (for item coverage).

    .. math:: Coverage@K = \frac{|\bigcup_u L_u|}{n_{items}}

    Parameters
    ----------
    ids : torch.Tensor
        ``(B, >=K)`` int64 ranked item ids, ``-1`` for empty places.
    n_items : int
        Catalogue size.
    k : int
        Cut-off K.

    Returns
    -------
    torch.Tensor
        ``(n_items,)`` bool indicator of the union of the lists.

    """
    top = ids[:, :k].reshape(-1)
    out = torch.zeros(n_items, dtype=torch.bool, device=ids.device)
    out[top[top >= 0]] = True
    return out
