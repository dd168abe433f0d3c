"""Local training of a bucket's users with a popularity-aware ``mf-loss`` (Fair Sampling etc.).

Score ``p_u . q_i`` (no bias), losses summed per user, the same per-user optimizer as BPR
(:mod:`florec.client.trainers.user_adam`, coupled weight decay). Every user is a separate logical
client with its own copy of the item rows it touches, as in
:mod:`florec.client.trainers.bpr_embedding`; the global item popularity comes from the fair
strategy's secure sum.
"""

from __future__ import annotations

import numpy as np
import torch

from florec.client.trainers.bpr_embedding import (
    LocalConfig,
    LocalResult,
    build_pairs,
    pair_rows,
    step_bounds,
)
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.user_adam import PerUserOptimizer
from florec.models import fair_losses as fair
from florec.recdata.seeds import Salt, stream


def pop_negatives(bucket: Bucket, users: np.ndarray, item_pop: np.ndarray, seed: int,
                  server_round: int) -> np.ndarray:
    """One negative per draw, chosen with probability ``pop_j`` among the user's unseen items.

    This is FS-Pair's federated approximation: in-batch partners make negatives roughly
    proportional to popularity, but partners from other users are unavailable on a node.
    A user whose unseen items all have popularity 0 draws uniformly among them.
    """
    out = np.empty(len(users), dtype=np.int64)
    pop = np.asarray(item_pop, dtype=np.float64)
    for j in np.unique(users):
        at = np.flatnonzero(users == j)
        seen = bucket.train.indices[bucket.train.indptr[j]:bucket.train.indptr[j + 1]]
        w = pop.copy()
        w[seen] = 0.0
        if w.sum() <= 0:
            w = np.ones_like(pop)
            w[seen] = 0.0
        cum = np.cumsum(w)
        rng = stream(seed, Salt.FS_PAIR_NEGATIVES, server_round, bucket.users[j])
        out[at] = np.minimum(np.searchsorted(cum, rng.random(len(at)) * cum[-1], side="right"),
                             len(pop) - 1)
    return out


def _point_terms(loss: str, logits: torch.Tensor, y: torch.Tensor, pop: torch.Tensor,
                 theta: torch.Tensor, n_users: int) -> torch.Tensor:
    if loss == "fs-point":
        return fair.weighted_point_loss(logits, y, fair.fs_point_weights(y, pop, n_users))
    if loss == "wmf":
        return fair.wmf_loss(logits, y)
    if loss == "relmf":
        return fair.relmf_loss(logits, y, theta)
    return fair.du_loss(logits, y, theta, fair.negative_propensity(theta))


def _fair_point(bucket: Bucket, item_emb: np.ndarray, user_emb: np.ndarray, cfg: LocalConfig,
                server_round: int, device: str, pop: torch.Tensor, n_users: int
                ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Point-wise losses over **all** items of each user: the closed form of FS-Point.

    Each local epoch visits the items in a seeded order (the same for every user, keyed by the
    seed, round and epoch) in chunks of ``local_batch_size``; a step is one step of every
    user's optimizer over p_u and the user's copy of the item table (the gradient reaches the
    chunk's rows only).
    """
    n_items, b = bucket.n_items, len(bucket.users)
    P = torch.as_tensor(user_emb, dtype=torch.float32, device=device).clone()
    L = torch.as_tensor(item_emb, dtype=torch.float32, device=device).expand(b, -1, -1).clone()
    y_all = torch.as_tensor(bucket.train.toarray() > 0, device=device).to(torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    everyone = torch.arange(b, device=device)
    opt = PerUserOptimizer([P, L], [everyone, everyone[:, None].expand(b, n_items)], b, cfg.lr,
                           cfg.weight_decay, cfg.optimizer == "adam")
    all_active = torch.ones(b, dtype=torch.bool, device=device)
    loss_sum = 0.0
    for epoch in range(cfg.local_epochs):
        order = stream(cfg.seed, Salt.FAIR_ITEM_ORDER, server_round, epoch).permutation(n_items)
        for s in range(0, n_items, cfg.local_batch_size):
            c = torch.as_tensor(order[s : s + cfg.local_batch_size], device=device)
            P.requires_grad_(True)
            L.requires_grad_(True)
            logits = torch.einsum("bd,bmd->bm", P, L[:, c])
            loss = _point_terms(cfg.mf_loss, logits, y_all[:, c], pop[c].expand(b, -1),
                                theta[c].expand(b, -1), n_users)
            g_p, g_l = torch.autograd.grad(loss, (P, L))
            P.requires_grad_(False)
            L.requires_grad_(False)
            loss_sum += float(loss.detach())
            opt.step([g_p, g_l], all_active)
    delta = (L.cpu().numpy() - item_emb[None]).reshape(b * n_items, -1)
    return P.cpu().numpy(), delta, loss_sum, b * n_items * cfg.local_epochs


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
      all items, IPS-weighted.

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
    b, n_items = len(bucket.users), bucket.n_items
    zero_bias = lambda rows: np.zeros(rows, dtype=np.float32)  # noqa: E731
    if cfg.mf_loss in fair.POINT_LOSSES:
        new_p, delta, loss_sum, n_terms = _fair_point(bucket, item_emb, user_emb, cfg,
                                                      server_round, device, pop, n_users)
        empty = np.zeros(0, dtype=np.int64)
        return LocalResult(new_p, np.repeat(np.arange(b), n_items), np.tile(np.arange(n_items), b),
                           delta, zero_bias(b * n_items), loss_sum, n_terms, (empty,) * 3)
    pairs = build_pairs(bucket, cfg, server_round)
    if cfg.mf_loss == "fs-pair":
        pairs["neg"] = pop_negatives(bucket, pairs["user"], item_pop, cfg.seed, server_round)
    else:  # ubpr: the second item is uniform over all items, positives included
        draws = [stream(cfg.seed, Salt.UBPR_ITEMS, server_round, bucket.users[j])
                 .integers(n_items, size=int((pairs["user"] == j).sum())) for j in range(b)]
        pairs["neg"] = np.empty(len(pairs["user"]), dtype=np.int64)
        for j in range(b):
            pairs["neg"][pairs["user"] == j] = draws[j]
    n_pairs = len(pairs["user"])
    row_user, row_item, pos_idx, neg_idx = pair_rows(pairs, n_items)
    as_t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    users_t, pos_row, neg_row = as_t(pairs["user"]), as_t(pos_idx), as_t(neg_idx)
    P = as_t(user_emb, torch.float32).clone()
    L = as_t(item_emb[row_item], torch.float32).clone()
    y_neg = as_t(bucket.train[pairs["user"], pairs["neg"]].A1 > 0, torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    items_pos, items_neg = as_t(pairs["pos"]), as_t(pairs["neg"])
    opt = PerUserOptimizer([P, L], [torch.arange(b, device=device), as_t(row_user)], b, cfg.lr,
                           cfg.weight_decay, cfg.optimizer == "adam")
    loss_sum = 0.0
    for _, s, e in step_bounds(pairs["step"]):
        uu, pr, nr = users_t[s:e], pos_row[s:e], neg_row[s:e]
        pu = P.clone().requires_grad_(True)
        lr_ = L.clone().requires_grad_(True)
        sp_, sn_ = (pu[uu] * lr_[pr]).sum(-1), (pu[uu] * lr_[nr]).sum(-1)
        if cfg.mf_loss == "fs-pair":
            loss = fair.pair_loss(sp_, sn_)
        else:
            loss = fair.ubpr_loss(sp_, sn_, theta[items_pos[s:e]], theta[items_neg[s:e]],
                                  y_neg[s:e])
        g_p, g_l = torch.autograd.grad(loss, (pu, lr_))
        loss_sum += float(loss.detach())
        active = torch.zeros(b, dtype=torch.bool, device=device)
        active[uu] = True
        opt.step([g_p, g_l], active)
    return LocalResult(P.cpu().numpy(), row_user, row_item,
                       L.cpu().numpy() - item_emb[row_item], zero_bias(len(row_item)), loss_sum,
                       n_pairs, (bucket.users[pairs["user"]], pairs["pos"], pairs["neg"]))
