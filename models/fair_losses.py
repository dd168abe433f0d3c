"""Popularity-debiasing losses over MF scores: Fair Sampling and its baselines (summed, not mean).

Notation: ``s_ui`` is the score ``p_u . q_i``, ``y`` the 0/1 label, ``sigma`` the logistic
function, ``theta_i`` the IPS propensity of item i (:func:`propensity`). Every loss is a **sum**
over its terms, as in the Fair Sampling code (fair_sampling.md section 6.4): the gradient scale
depends on the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "PAIR_LOSSES",
    "POINT_LOSSES",
    "cpr_loss",
    "du_loss",
    "fs_pair_loss",
    "fs_point_weights",
    "negative_propensity",
    "pair_loss",
    "propensity",
    "relmf_loss",
    "ubpr_loss",
    "weighted_point_loss",
    "wmf_loss",
]

#: Losses trained on observed pairs (one negative or partner per positive).
PAIR_LOSSES = ("bpr", "ubpr", "cpr", "fs-pair")
#: Losses trained on every (user, item) cell of the interaction matrix.
POINT_LOSSES = ("wmf", "relmf", "du", "fs-point")


def propensity(pop: torch.Tensor, beta: float) -> torch.Tensor:
    r"""IPS propensity of each item.

    .. math:: \theta_i = \mathrm{clip}\big((pop_i / \max_j pop_j)^{\beta}, 0.1, 1\big)

    Parameters
    ----------
    pop : torch.Tensor
        ``(n_items,)`` train interaction counts.
    beta : float
        Exponent (0 gives ``theta = 1``: no reweighting).

    Returns
    -------
    torch.Tensor
        ``(n_items,)`` float32 in [0.1, 1].

    """
    pop = pop.to(torch.float32)
    top = pop.max().clamp(min=1.0)
    return (pop / top).pow(beta).clamp(0.1, 1.0)


def negative_propensity(theta: torch.Tensor) -> torch.Tensor:
    r"""DU's propensity of a negative: :math:`\theta^-_i = \mathrm{clip}(1 - \theta_i, 0.1, 1)`."""
    return (1.0 - theta).clamp(0.1, 1.0)


def pair_loss(pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None = None
              ) -> torch.Tensor:
    r"""Summed (weighted) BPR loss.

    .. math:: L = \sum_t w_t \,\mathrm{softplus}(s^-_t - s^+_t)
              = -\sum_t w_t \log\sigma(s^+_t - s^-_t)

    Parameters
    ----------
    pos, neg : torch.Tensor
        ``(T,)`` scores of the positive and the negative of each term.
    weight : torch.Tensor, optional
        ``(T,)`` term weights (1 when omitted).

    Returns
    -------
    torch.Tensor
        Scalar.

    """
    terms = F.softplus(neg - pos)
    return terms.sum() if weight is None else (terms * weight).sum()


def ubpr_loss(pos: torch.Tensor, other: torch.Tensor, theta_pos: torch.Tensor,
              theta_other: torch.Tensor, y_other: torch.Tensor) -> torch.Tensor:
    r"""Unbiased BPR (Saito 2020) with the item drawn uniformly from **all** items.

    .. math:: L = \sum_{(u,i,j)} \frac{1}{\theta_i}\Big(1 - \frac{y_{uj}}{\theta_j}\Big)
              \mathrm{softplus}(s_{uj} - s_{ui})

    ``j`` may be one of u's positives (then the weight is ``1 - 1/theta_j <= 0``).
    """
    weight = (1.0 / theta_pos) * (1.0 - y_other / theta_other)
    return pair_loss(pos, other, weight)


def fs_pair_loss(s_u1i1: torch.Tensor, s_u1i2: torch.Tensor, s_u2i2: torch.Tensor,
                 s_u2i1: torch.Tensor) -> torch.Tensor:
    r"""FS-Pair: each observed pair and its in-batch partner give two BPR terms.

    .. math:: L = \sum_{(u_1,i_1),(u_2,i_2)} \mathrm{softplus}(s_{u_1 i_2} - s_{u_1 i_1})
              + \mathrm{softplus}(s_{u_2 i_1} - s_{u_2 i_2})

    Each of u1, u2, i1, i2 occurs once in a positive and once in a negative instance.
    """
    return F.softplus(s_u1i2 - s_u1i1).sum() + F.softplus(s_u2i1 - s_u2i2).sum()


def cpr_loss(s_u1i1: torch.Tensor, s_u1i2: torch.Tensor, s_u2i2: torch.Tensor,
             s_u2i1: torch.Tensor) -> torch.Tensor:
    r"""Cross pairwise ranking (CPR) with the same partners as FS-Pair.

    .. math:: L = \sum \mathrm{softplus}\big((s_{u_1 i_2} + s_{u_2 i_1})
              - (s_{u_1 i_1} + s_{u_2 i_2})\big)
    """
    return F.softplus((s_u1i2 + s_u2i1) - (s_u1i1 + s_u2i2)).sum()


def wmf_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Point-wise squared loss on the sigmoid (the base loss of FS-Point and WMF).

    .. math:: L = \sum_{(u,i)} (\sigma(s_{ui}) - y_{ui})^2
    """
    return (torch.sigmoid(logits) - y).pow(2).sum()


def weighted_point_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
                        ) -> torch.Tensor:
    r"""Weighted point-wise squared loss.

    .. math:: L = \sum_{(u,i)} w_{ui} (\sigma(s_{ui}) - y_{ui})^2
    """
    return (weight * (torch.sigmoid(logits) - y).pow(2)).sum()


def relmf_loss(logits: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Rel-MF (Saito et al. 2020), the unbiased point-wise estimator on squared losses.

    .. math:: L = \sum_{(u,i)} (1 - y_{ui})\,\hat y_{ui}^2 + y_{ui}\Big(\frac{1}{\theta_i}
              (1 - \hat y_{ui})^2 + \big(1 - \frac{1}{\theta_i}\big)\hat y_{ui}^2\Big),
              \qquad \hat y = \sigma(s)
    """
    p = torch.sigmoid(logits)
    inv = 1.0 / theta
    return ((1 - y) * p.pow(2)).sum() + (y * (inv * (1 - p).pow(2) + (1 - inv) * p.pow(2))).sum()


def du_loss(logits: torch.Tensor, y: torch.Tensor, theta: torch.Tensor,
            theta_neg: torch.Tensor) -> torch.Tensor:
    r"""Dual unbiased (DU) point-wise loss: positives and negatives each reweighted.

    .. math:: L = \sum_{(u,i)} \frac{1 - y_{ui}}{\theta^-_i}\hat y_{ui}^2
              + \frac{y_{ui}}{\theta_i}(1 - \hat y_{ui})^2, \qquad \hat y = \sigma(s)
    """
    p = torch.sigmoid(logits)
    return ((1 - y) / theta_neg * p.pow(2)).sum() + (y / theta * (1 - p).pow(2)).sum()


def fs_point_weights(y: torch.Tensor, pop: torch.Tensor, n_users: int) -> torch.Tensor:
    r"""Expected per-epoch weight of each cell under FS-Point sampling (closed form).

    One FS-Point epoch visits every cell once and adds one supplement per cell: a positive cell
    of item i draws a negative user among the ``U - pop_i`` non-users, a negative cell draws a
    positive user among the ``pop_i`` users. In expectation

    .. math:: w_{ui} = \begin{cases} U / pop_i & y_{ui} = 1 \\ U / (U - pop_i) & y_{ui} = 0
              \end{cases}

    so each item gets U positive-labelled and U negative-labelled terms. Cells whose supplement
    would have no candidate (``pop_i = U`` for positives, ``pop_i = 0`` for negatives) keep
    weight 1, which the formula already gives.

    Parameters
    ----------
    y : torch.Tensor
        ``(...,)`` 0/1 labels.
    pop : torch.Tensor
        Item popularity of each cell, same shape as ``y``.
    n_users : int
        U, the number of users.

    Returns
    -------
    torch.Tensor
        Weights, float32, same shape as ``y``.

    """
    pop = pop.to(torch.float32)
    y = y.to(torch.float32)
    pos_w = n_users / pop.clamp(min=1.0)
    neg_w = n_users / (n_users - pop).clamp(min=1.0)
    return y * pos_w + (1 - y) * neg_w
