"""Local training of a bucket's users with a popularity-aware ``mf-loss`` (Fair Sampling etc.).

Score ``p_u . q_i`` (no bias), losses summed per user, the same per-user optimizer as BPR
(:mod:`florec.client.trainers.user_adam`, coupled weight decay). Every user is a separate logical
client with its own copy of the item rows it touches, as in
:mod:`florec.client.trainers.bpr_embedding`; the global item popularity comes from the fair
strategy's secure sum.

Both paths have the FedAvg-MF trainer's shape: no autograd graph over the tables and no copy of
them per step, and every step updates leading slices in place with
:meth:`PerUserOptimizer.step_leading` (fused Adam when the active users share a step count).

- Pair losses (``fs-pair``, ``ubpr``): users ranked by their number of local steps
  (``bpr_embedding._leading_layout``), the closed-form weighted BPR gradient
  (:func:`florec.client.trainers.bpr_embedding.bpr_step_grads` with zero biases).
- Point losses (``fs-point``, ``wmf``, ``relmf``, ``du``): every user takes part in every step,
  so all step counts agree; the gradient of the loss with respect to the chunk's scores
  ``s_ui`` (a ``(B, chunk)`` tensor) gives those of the tables in closed form,
  ``dL/dp_u = sum_i g_ui q_i`` and ``dL/dq_i = g_ui p_u`` (:func:`point_step_grads`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from florec.client.trainers.bpr_embedding import (
    LocalConfig,
    LocalResult,
    _leading_layout,
    bpr_step_grads,
    build_pairs,
    pair_rows,
    step_bounds,
)
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.fair_point import fair_point
from florec.client.trainers.user_adam import PerUserOptimizer
from florec.models import fair_losses as fair
from florec.recdata.seeds import Salt, stream


def _by_user(users: np.ndarray, n: int) -> list[np.ndarray]:
    """For each local user ``0..n-1``, the positions of its entries in ``users`` (ascending)."""
    order = np.argsort(users, kind="stable")
    return np.split(order, np.searchsorted(users[order], np.arange(1, n)))


def pop_negatives(bucket: Bucket, users: np.ndarray, item_pop: np.ndarray, seed: int,
                  server_round: int) -> np.ndarray:
    """One negative per draw, chosen with probability ``pop_j`` among the user's unseen items.

    This is FS-Pair's federated approximation: in-batch partners make negatives roughly
    proportional to popularity, but partners from other users are unavailable on a node.
    A user whose unseen items all have popularity 0 draws uniformly among them.
    """
    out = np.empty(len(users), dtype=np.int64)
    pop = np.asarray(item_pop, dtype=np.float64)
    for j, at in enumerate(_by_user(users, len(bucket.users))):
        if len(at):
            out[at] = popular_unseen(bucket, j, pop, len(at), seed, server_round)
    return out


def popular_unseen(bucket: Bucket, j: int, pop: np.ndarray, k: int, seed: int,
                   server_round: int) -> np.ndarray:
    """``k`` negatives for local user ``j``, from the user's own stream.

    Each draw picks item ``i`` with probability ``pop_i / sum(pop over unseen items)`` among the
    user's unseen items, uniformly among them when they all have popularity 0.
    """
    seen = bucket.train.indices[bucket.train.indptr[j]:bucket.train.indptr[j + 1]]
    w = pop.copy()
    w[seen] = 0.0
    if w.sum() <= 0:
        w = np.ones_like(pop)
        w[seen] = 0.0
    cum = np.cumsum(w)
    rng = stream(seed, Salt.FS_PAIR_NEGATIVES, server_round, bucket.users[j])
    return np.minimum(np.searchsorted(cum, rng.random(k) * cum[-1], side="right"), len(pop) - 1)


def ubpr_items(bucket: Bucket, users: np.ndarray, seed: int, server_round: int) -> np.ndarray:
    """UBPR's second item of each draw: uniform over **all** items, positives included."""
    out = np.empty(len(users), dtype=np.int64)
    for j, at in enumerate(_by_user(users, len(bucket.users))):
        rng = stream(seed, Salt.UBPR_ITEMS, server_round, bucket.users[j])
        out[at] = rng.integers(bucket.n_items, size=len(at))
    return out


def _observed(bucket: Bucket, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether each (local user, item) is a training interaction (empty arrays allowed)."""
    y = bucket.train[users, items]  # a sparse matrix, not np.matrix, when the arrays are empty
    return (y.toarray() if sp.issparse(y) else np.asarray(y)).ravel() > 0


def _fair_pair(bucket: Bucket, item_emb: np.ndarray, user_emb: np.ndarray, cfg: LocalConfig,
               server_round: int, device: str, item_pop: np.ndarray, pop: torch.Tensor
               ) -> LocalResult:
    """Pair losses: each user's copy of its touched rows, closed-form weighted BPR steps."""
    b, n_items = len(bucket.users), bucket.n_items
    pairs = build_pairs(bucket, cfg, server_round)
    if cfg.mf_loss == "fs-pair":
        pairs["neg"] = pop_negatives(bucket, pairs["user"], item_pop, cfg.seed, server_round)
    else:
        pairs["neg"] = ubpr_items(bucket, pairs["user"], cfg.seed, server_round)
    row_user, row_item, pos_idx, neg_idx = pair_rows(pairs, n_items)
    lay = _leading_layout(pairs, row_user, b)
    as_t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    users_t = as_t(lay["rank"][pairs["user"]])
    pos_row, neg_row = as_t(lay["row_of"][pos_idx]), as_t(lay["row_of"][neg_idx])
    if cfg.mf_loss == "fs-pair":
        weight = torch.ones(len(pairs["user"]), device=device)
    else:  # ubpr: (1 / theta_i) (1 - y_uj / theta_j), fair.ubpr_loss's weight
        theta = fair.propensity(pop, cfg.ips_beta)
        y_neg = as_t(_observed(bucket, pairs["user"], pairs["neg"]), torch.float32)
        weight = (1.0 / theta[as_t(pairs["pos"])]) * (1.0 - y_neg / theta[as_t(pairs["neg"])])
    stored = as_t(row_item[lay["row_order"]])
    P = as_t(user_emb, torch.float32)[as_t(lay["order"])].contiguous()
    L0 = as_t(item_emb, torch.float32)
    L = L0.index_select(0, stored)
    no_bias = torch.zeros(len(L), device=device)
    opt = PerUserOptimizer([P, L], [torch.arange(b, device=device), as_t(lay["row_owner"])], b,
                           cfg.lr, cfg.weight_decay, cfg.optimizer == "adam")
    loss_sum = 0.0
    for t, s, e in step_bounds(pairs["step"]):
        n_act, n_rows = int(lay["active"][t]), int(lay["rows"][t])
        terms, grads = bpr_step_grads(P[:n_act], L[:n_rows], no_bias[:n_rows], users_t[s:e],
                                      pos_row[s:e], neg_row[s:e], weight[s:e], 0.0)
        loss_sum += float((weight[s:e] * terms).sum())
        opt.step_leading([grads[0], grads[1]], n_act)
    out_rows = as_t(lay["row_of"])
    return LocalResult(P[as_t(lay["rank"])].cpu().numpy(), row_user, row_item,
                       L.sub_(L0.index_select(0, stored)).index_select(0, out_rows).cpu().numpy(),
                       np.zeros(len(row_item), dtype=np.float32), loss_sum, len(pairs["user"]),
                       (bucket.users[pairs["user"]], pairs["pos"], pairs["neg"]))


def fair_local_update(bucket: Bucket, item_emb: np.ndarray, item_bias: np.ndarray,
                      user_emb: np.ndarray, cfg: LocalConfig, server_round: int,
                      device: str = "cpu", item_pop: np.ndarray | None = None,
                      n_users: int | None = None) -> LocalResult:
    """Local training with a popularity-aware ``cfg.mf_loss`` (score ``p_u . q_i``, no bias).

    - ``fs-point``: the expectation-exact closed form of FS-Point over all items, weights
      ``U / pop_i`` on positives and ``U / (U - pop_i)`` on negatives
      (:func:`florec.models.fair_losses.fs_point_weights`); ``wmf``, ``relmf``, ``du`` likewise over
      all items with their own weights.
    - ``fs-pair`` (an approximation): BPR with negatives drawn in proportion to ``pop`` among
      the user's unseen items (:func:`pop_negatives`); ``ubpr``: the second item uniform over
      all items, IPS-weighted (:func:`ubpr_items`).

    Losses are summed per user. Each user steps its own optimizer
    (:class:`florec.client.trainers.user_adam.PerUserOptimizer`: ``torch.optim.Adam`` or ``SGD``
    per user, coupled weight decay ``weight_decay * p``) over its embedding and its item rows.

    Raises
    ------
    ValueError
        If ``item_pop`` is missing or has the wrong length, or U is unknown.

    """
    if item_pop is None or len(item_pop) != bucket.n_items:
        raise ValueError(f"mf-loss={cfg.mf_loss} needs the global item popularity (item_pop of "
                         f"length {bucket.n_items}) from the fair strategy's secure sum")
    n_users = n_users or int(getattr(bucket, "population", 0) or 0)
    if n_users <= 0:
        raise ValueError(f"mf-loss={cfg.mf_loss} needs the number of users U; pass n_users")
    pop = torch.as_tensor(np.asarray(item_pop, dtype=np.float32), device=device)
    if cfg.mf_loss not in fair.POINT_LOSSES:
        return _fair_pair(bucket, item_emb, user_emb, cfg, server_round, device, item_pop, pop)
    b, n_items = len(bucket.users), bucket.n_items
    new_p, delta, loss_sum, n_terms = fair_point(bucket, item_emb, user_emb, cfg, server_round,
                                                 device, pop, n_users)
    empty = np.zeros(0, dtype=np.int64)
    return LocalResult(new_p, np.repeat(np.arange(b), n_items), np.tile(np.arange(n_items), b),
                       delta, np.zeros(b * n_items, dtype=np.float32), loss_sum, n_terms,
                       (empty,) * 3)
