"""Local BPR training of every user of a bucket as a separate logical client, vectorised.

Each user u trains its private embedding p_u and its own copy of the item rows it touches
(its positives and sampled negatives) starting from the global table. Rows are keyed by
(user, item), so one batched autograd pass updates all users' copies independently: with
SGD or the per-user masked Adam below, the result equals training the users one by one.
Random streams are keyed by (seed, round, global user id), so results do not depend on how
users are grouped into buckets.

``mf-loss`` other than ``bpr`` (popularity-aware losses, given the global item popularity from
the strategy's secure sum) trains in :func:`fair_local_update`: every user is still a separate
logical client with its own copy of the item rows it touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from client.trainers.bucket import Bucket
from models import fair_losses as fair
from models.mf import bpr_terms
from recdata.runconfig import RunConfig
from recdata.sampling import sample_negatives

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass
class LocalConfig:
    """Knobs of local training (a view of the run config)."""

    local_epochs: int = 1
    local_batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 0.01
    reg: float = 0.0
    seed: int = 0
    mf_loss: str = "bpr"
    ips_beta: float = 0.5
    weight_decay: float = 0.0

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> LocalConfig:
        """The local-training view of a run config."""
        return cls(cfg.local_epochs, cfg.local_batch_size, cfg.optimizer, cfg.lr, cfg.reg,
                   cfg.seed, cfg.mf_loss, cfg.ips_beta, cfg.weight_decay)


@dataclass
class LocalResult:
    """Per-user updated item rows, ready to be aggregated on the node.

    ``row_user`` (local user index) and ``row_item`` name each touched row; ``delta`` and
    ``bias_delta`` are the row's change against the global table.
    """

    user_emb: np.ndarray
    row_user: np.ndarray
    row_item: np.ndarray
    delta: np.ndarray
    bias_delta: np.ndarray
    loss_sum: float
    num_pairs: int
    triples: tuple[np.ndarray, np.ndarray, np.ndarray]


def build_pairs(bucket: Bucket, cfg: LocalConfig, server_round: int) -> dict[str, np.ndarray]:
    """Every (user, positive, negative, step) of this round's local epochs, ordered by step."""
    deg = np.diff(bucket.train.indptr).astype(np.int64)
    n_per_user = deg * cfg.local_epochs
    keys, uniforms = [], []
    for j, user in enumerate(bucket.users.tolist()):
        rng = np.random.default_rng([cfg.seed, 11, server_round, user])
        draws = rng.random((2, n_per_user[j]))
        keys.append(draws[0])
        uniforms.append(draws[1])
    u_loc = np.repeat(np.arange(len(deg)), n_per_user)
    first = np.concatenate([[0], np.cumsum(n_per_user)[:-1]])
    k = np.arange(len(u_loc)) - first[u_loc]
    safe_deg = np.maximum(deg[u_loc], 1)
    epoch, slot = k // safe_deg, k % safe_deg
    key = np.concatenate(keys) if keys else np.zeros(0)
    order = np.lexsort((key, epoch, u_loc))
    u_loc, epoch, slot = u_loc[order], epoch[order], slot[order]
    pos = bucket.train.indices[bucket.train.indptr[u_loc] + slot].astype(np.int64)
    neg = sample_negatives(u_loc, bucket.train, np.concatenate(uniforms) if uniforms else key)
    rank = np.arange(len(u_loc)) - (first[u_loc] + epoch * deg[u_loc])
    batches = -(-deg // cfg.local_batch_size)
    step = epoch * batches[u_loc] + rank // cfg.local_batch_size
    by_step = np.argsort(step, kind="stable")
    return {"user": u_loc[by_step], "pos": pos[by_step], "neg": neg[by_step],
            "step": step[by_step]}


class _MaskedAdam:
    """Adam whose step touches only the rows of users active in that step."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr = params, lr
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[torch.Tensor], active: list[torch.Tensor], t: int) -> None:
        b1, b2 = ADAM_BETAS
        for p, g, m, v, rows in zip(self.params, grads, self.m, self.v, active, strict=True):
            m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
            v[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
            m_hat, v_hat = m[rows] / (1 - b1**t), v[rows] / (1 - b2**t)
            p[rows] -= self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)


def local_update(
    bucket: Bucket,
    item_emb: np.ndarray,
    item_bias: np.ndarray,
    user_emb: np.ndarray,
    cfg: LocalConfig,
    server_round: int,
    device: str = "cpu",
    item_pop: np.ndarray | None = None,
    n_users: int | None = None,
) -> LocalResult:
    """Train every user of the bucket on its own data for ``cfg.local_epochs`` epochs.

    Parameters
    ----------
    bucket : Bucket
        The node's users and their training rows.
    item_emb, item_bias : np.ndarray
        The global item table (n_items, d) and biases (n_items,).
    user_emb : np.ndarray
        The users' private embeddings (B, d), in bucket order.
    cfg : LocalConfig
        Local training knobs.
    server_round : int
        Keys the random streams together with the seed and each user id.
    device : str
        Torch device.
    item_pop : np.ndarray, optional
        Global item popularity (train counts from the strategy's secure sum), for the
        popularity-aware losses of ``mf-loss``; required unless ``cfg.mf_loss`` is ``bpr``.
    n_users : int, optional
        U, the number of users of the federation (FS-Point's weights); defaults to the
        bucket's ``population``.

    Returns
    -------
    LocalResult
        New private embeddings and each user's changed item rows.

    """
    if cfg.mf_loss != "bpr":
        return fair_local_update(bucket, item_emb, item_bias, user_emb, cfg, server_round,
                                 device, item_pop, n_users)
    pairs = build_pairs(bucket, cfg, server_round)
    n_items = bucket.n_items
    row_key, inverse = np.unique(
        np.concatenate([pairs["user"] * n_items + pairs["pos"],
                        pairs["user"] * n_items + pairs["neg"]]), return_inverse=True)
    n_pairs = len(pairs["user"])
    row_user, row_item = row_key // n_items, row_key % n_items
    as_t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    users_t = as_t(pairs["user"], torch.long)
    pos_row, neg_row = as_t(inverse[:n_pairs], torch.long), as_t(inverse[n_pairs:], torch.long)
    row_user_t = as_t(row_user, torch.long)
    P = as_t(user_emb).clone()
    L = as_t(item_emb[row_item]).clone()
    Lb = as_t(item_bias[row_item]).clone()
    params = [P, L, Lb]
    adam = _MaskedAdam(params, cfg.lr) if cfg.optimizer == "adam" else None
    bounds = np.searchsorted(pairs["step"], np.arange(pairs["step"].max(initial=-1) + 2))
    loss_sum = 0.0
    for t in range(len(bounds) - 1):
        s, e = int(bounds[t]), int(bounds[t + 1])
        if s == e:
            continue
        uu, pr, nr = users_t[s:e], pos_row[s:e], neg_row[s:e]
        for p in params:
            p.requires_grad_(True)
        terms = bpr_terms(P[uu], L[pr], L[nr], Lb[pr], Lb[nr], cfg.reg)
        per_user = torch.bincount(uu, minlength=len(P)).clamp(min=1).to(terms.dtype)
        loss = (terms / per_user[uu]).sum()
        grads = torch.autograd.grad(loss, params)
        loss_sum += float(terms.detach().sum())
        with torch.no_grad():
            for p in params:
                p.requires_grad_(False)
            if adam is None:
                for p, g in zip(params, grads, strict=True):
                    p -= cfg.lr * g
            else:
                active_user = torch.zeros(len(P), dtype=torch.bool, device=device)
                active_user[uu] = True
                active_row = active_user[row_user_t]
                adam.step(list(grads), [active_user, active_row, active_row], t + 1)
    return LocalResult(
        user_emb=P.detach().cpu().numpy(),
        row_user=row_user,
        row_item=row_item,
        delta=(L.detach().cpu().numpy() - item_emb[row_item]),
        bias_delta=(Lb.detach().cpu().numpy() - item_bias[row_item]),
        loss_sum=loss_sum,
        num_pairs=n_pairs,
        triples=(bucket.users[pairs["user"]], pairs["pos"], pairs["neg"]),
    )


# --------------------------------------------------------------------------------------------------
# Popularity-aware losses (mf-loss != bpr); score p_u . q_i, summed losses, coupled weight decay
# --------------------------------------------------------------------------------------------------


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
        rng = np.random.default_rng([seed, 31, server_round, int(bucket.users[j])])
        out[at] = np.minimum(np.searchsorted(cum, rng.random(len(at)) * cum[-1], side="right"),
                             len(pop) - 1)
    return out


class _RowAdam:
    """Adam (with coupled L2 ``wd * p`` added to the gradient) on chosen rows of one tensor.

    Each row keeps its own step count, so rows updated rarely get the right bias correction.
    """

    def __init__(self, param: torch.Tensor, lr: float, wd: float, adam: bool) -> None:
        self.p, self.lr, self.wd, self.adam = param, lr, wd, adam
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)
        self.t = torch.zeros(param.shape[:-1], dtype=torch.float32, device=param.device)

    def step(self, index: tuple, grad: torch.Tensor) -> None:
        p = self.p[index]
        g = grad + self.wd * p
        if not self.adam:
            self.p[index] = p - self.lr * g
            return
        b1, b2 = ADAM_BETAS
        self.t[index] += 1
        t = self.t[index].unsqueeze(-1)
        m = b1 * self.m[index] + (1 - b1) * g
        v = b2 * self.v[index] + (1 - b2) * g * g
        self.m[index], self.v[index] = m, v
        self.p[index] = p - self.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + ADAM_EPS)


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
    seed, round and epoch) in chunks of ``local_batch_size``; a step updates p_u and the user's
    copy of the chunk's item rows.
    """
    n_items, b = bucket.n_items, len(bucket.users)
    P = torch.as_tensor(user_emb, dtype=torch.float32, device=device).clone()
    L = torch.as_tensor(item_emb, dtype=torch.float32, device=device).expand(b, -1, -1).clone()
    y_all = torch.as_tensor(bucket.train.toarray() > 0, device=device).to(torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    opt_p = _RowAdam(P, cfg.lr, cfg.weight_decay, cfg.optimizer == "adam")
    opt_l = _RowAdam(L, cfg.lr, cfg.weight_decay, cfg.optimizer == "adam")
    everyone = torch.arange(b, device=device)
    loss_sum = 0.0
    for epoch in range(cfg.local_epochs):
        order = np.random.default_rng([cfg.seed, 37, server_round, epoch]).permutation(n_items)
        for s in range(0, n_items, cfg.local_batch_size):
            c = torch.as_tensor(order[s : s + cfg.local_batch_size], device=device)
            pu = P.clone().requires_grad_(True)
            lc = L[:, c].clone().requires_grad_(True)
            logits = torch.einsum("bd,bmd->bm", pu, lc)
            loss = _point_terms(cfg.mf_loss, logits, y_all[:, c], pop[c].expand(b, -1),
                                theta[c].expand(b, -1), n_users)
            g_p, g_l = torch.autograd.grad(loss, (pu, lc))
            loss_sum += float(loss.detach())
            with torch.no_grad():
                opt_p.step((everyone,), g_p)
                opt_l.step((everyone[:, None], c[None, :]), g_l)
    delta = (L.cpu().numpy() - item_emb[None]).reshape(b * n_items, -1)
    return P.cpu().numpy(), delta, loss_sum, b * n_items * cfg.local_epochs


def fair_local_update(bucket: Bucket, item_emb: np.ndarray, item_bias: np.ndarray,
                      user_emb: np.ndarray, cfg: LocalConfig, server_round: int,
                      device: str = "cpu", item_pop: np.ndarray | None = None,
                      n_users: int | None = None) -> LocalResult:
    """Local training with a popularity-aware ``cfg.mf_loss`` (score ``p_u . q_i``, no bias).

    - ``fs-point``: the expectation-exact closed form of FS-Point over all items, weights
      ``U / pop_i`` on positives and ``U / (U - pop_i)`` on negatives
      (:func:`models.fair_losses.fs_point_weights`); ``wmf``, ``relmf``, ``du`` likewise over
      all items with their own weights.
    - ``fs-pair`` (an approximation): BPR with negatives drawn in proportion to ``pop`` among
      the user's unseen items (:func:`pop_negatives`); ``ubpr``: the second item uniform over
      all items, IPS-weighted.

    Losses are summed per user; coupled weight decay ``weight_decay * p`` acts on the rows a
    step touches (all of a user's item rows under the point-wise losses).

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
        draws = [np.random.default_rng([cfg.seed, 41, server_round, int(bucket.users[j])])
                 .integers(n_items, size=int((pairs["user"] == j).sum())) for j in range(b)]
        pairs["neg"] = np.empty(len(pairs["user"]), dtype=np.int64)
        for j in range(b):
            pairs["neg"][pairs["user"] == j] = draws[j]
    row_key, inverse = np.unique(np.concatenate([pairs["user"] * n_items + pairs["pos"],
                                                 pairs["user"] * n_items + pairs["neg"]]),
                                 return_inverse=True)
    n_pairs = len(pairs["user"])
    row_user, row_item = row_key // n_items, row_key % n_items
    as_t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    users_t, pos_row, neg_row = (as_t(pairs["user"]), as_t(inverse[:n_pairs]),
                                 as_t(inverse[n_pairs:]))
    P = as_t(user_emb, torch.float32).clone()
    L = as_t(item_emb[row_item], torch.float32).clone()
    y_neg = as_t(bucket.train[pairs["user"], pairs["neg"]].A1 > 0, torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    items_pos, items_neg = as_t(pairs["pos"]), as_t(pairs["neg"])
    adam = cfg.optimizer == "adam"
    opt_p, opt_l = (_RowAdam(P, cfg.lr, cfg.weight_decay, adam),
                    _RowAdam(L, cfg.lr, cfg.weight_decay, adam))
    bounds = np.searchsorted(pairs["step"], np.arange(pairs["step"].max(initial=-1) + 2))
    loss_sum = 0.0
    for t in range(len(bounds) - 1):
        s, e = int(bounds[t]), int(bounds[t + 1])
        if s == e:
            continue
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
        with torch.no_grad():
            opt_p.step((torch.unique(uu),), g_p[torch.unique(uu)])
            rows = torch.unique(torch.cat([pr, nr]))
            opt_l.step((rows,), g_l[rows])
    return LocalResult(P.cpu().numpy(), row_user, row_item,
                       L.cpu().numpy() - item_emb[row_item], zero_bias(len(row_item)), loss_sum,
                       n_pairs, (bucket.users[pairs["user"]], pairs["pos"], pairs["neg"]))
