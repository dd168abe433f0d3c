"""Local BPR training of every user of a bucket as a separate logical client, vectorised.

Each user u trains its private embedding p_u and its own copy of the item rows it touches
(its positives and sampled negatives) starting from the global table. Rows are keyed by
(user, item), so one batched step (the closed-form BPR gradient, :func:`bpr_step_grads`)
updates all users' copies independently, and each user has its own optimizer
(:class:`florec.client.trainers.user_adam.PerUserOptimizer`, ``torch.optim.Adam`` or ``SGD``
per user, ``weight-decay`` as their coupled L2): the result
equals training the users one by one. The optimizer of the private embeddings can continue from
the previous round's state (``keep-user-opt-state``: the node stores it); the item copies start
fresh from the global table each round, and so does their optimizer. Users are ranked by their
number of local steps and their rows stored in that order, so each step updates leading slices
in place (:meth:`PerUserOptimizer.step_leading`, :func:`_leading_layout`).
The local step size follows ``lr-schedule`` over the rounds (:func:`scheduled_lr`).
Random streams are keyed by (seed, round, global user id), so results do not depend on how
users are grouped into buckets.

``mf-loss`` other than ``bpr`` (popularity-aware losses, given the global item popularity from
the strategy's secure sum) trains in :mod:`florec.client.trainers.fair_embedding`: every user is
still a separate logical client with its own copy of the item rows it touches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from florec.client.trainers.bucket import Bucket
from florec.client.trainers.user_adam import PerUserOptimizer
from florec.recdata.runconfig import RunConfig
from florec.recdata.sampling import sample_negatives
from florec.recdata.seeds import Salt, stream


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
    def from_run_config(cls, cfg: RunConfig, server_round: int | None = None) -> LocalConfig:
        """The local-training view of a run config (lr of ``server_round`` if given)."""
        lr = cfg.lr if server_round is None else scheduled_lr(cfg, server_round)
        return cls(cfg.local_epochs, cfg.local_batch_size, cfg.optimizer, lr, cfg.reg,
                   cfg.seed, cfg.mf_loss, cfg.ips_beta, cfg.weight_decay)


def scheduled_lr(cfg: RunConfig, server_round: int) -> float:
    r"""The local step size of round ``t = server_round`` (1-based) under ``lr-schedule``.

    - ``constant``: :math:`\eta_t = \eta`;
    - ``cosine`` over ``num-rounds`` T: :math:`\eta_t = \eta_{min} + (\eta - \eta_{min})
      (1 + \cos(\pi (t-1) / T)) / 2`;
    - ``step``: :math:`\eta_t = \eta \, \gamma^{\lfloor (t-1) / S \rfloor}` with
      S = ``lr-step-rounds`` and :math:`\gamma` = ``lr-gamma``.

    Parameters
    ----------
    cfg : RunConfig
        Supplies ``lr``, ``lr-schedule``, ``lr-min``, ``lr-step-rounds``, ``lr-gamma`` and
        ``num-rounds``.
    server_round : int
        The round, from 1.

    Returns
    -------
    float
        The step size of that round.

    """
    t = max(server_round, 1) - 1
    if cfg.lr_schedule == "cosine":
        frac = min(t / cfg.num_rounds, 1.0)
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (t // cfg.lr_step_rounds)
    return cfg.lr


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
    user_opt_state: dict[str, np.ndarray] | None = None


def build_pairs(bucket: Bucket, cfg: LocalConfig, server_round: int) -> dict[str, np.ndarray]:
    """Every (user, positive, negative, step) of this round's local epochs, ordered by step."""
    deg = np.diff(bucket.train.indptr).astype(np.int64)
    n_per_user = deg * cfg.local_epochs
    keys, uniforms = [], []
    for j, user in enumerate(bucket.users.tolist()):
        rng = stream(cfg.seed, Salt.BPR_PAIRS, server_round, user)
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


def step_bounds(step: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(t, start, end)`` of every non-empty local step ``t`` in ``step`` (sorted)."""
    bounds = np.searchsorted(step, np.arange(step.max(initial=-1) + 2))
    for t in range(len(bounds) - 1):
        if bounds[t] < bounds[t + 1]:
            yield t, int(bounds[t]), int(bounds[t + 1])


def pair_rows(pairs: dict[str, np.ndarray], n_items: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's own copy of the item rows its pairs touch.

    Returns
    -------
    (row_user, row_item, pos_row, neg_row)
        The (local user, item) of every distinct touched row, and for each pair the row index
        of its positive and of its negative.

    """
    n_pairs = len(pairs["user"])
    row_key, inverse = np.unique(np.concatenate([pairs["user"] * n_items + pairs["pos"],
                                                 pairs["user"] * n_items + pairs["neg"]]),
                                 return_inverse=True)
    return row_key // n_items, row_key % n_items, inverse[:n_pairs], inverse[n_pairs:]


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
    user_opt_state: dict[str, np.ndarray] | None = None,
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
    user_opt_state : dict of str to np.ndarray, optional
        State of the private embeddings' optimizer from the previous round
        (:meth:`PerUserOptimizer.state`, one row per bucket user); fresh if None.

    Returns
    -------
    LocalResult
        New private embeddings, each user's changed item rows and the private embeddings'
        optimizer state (``mf-loss`` ``bpr`` only).

    """
    if cfg.mf_loss != "bpr":
        from florec.client.trainers.fair_embedding import fair_local_update

        return fair_local_update(bucket, item_emb, item_bias, user_emb, cfg, server_round,
                                 device, item_pop, n_users)
    pairs = build_pairs(bucket, cfg, server_round)
    row_user, row_item, pos_idx, neg_idx = pair_rows(pairs, bucket.n_items)
    lay = _leading_layout(pairs, row_user, len(bucket.users))
    as_t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    rank, row_order = as_t(lay["rank"], torch.long), as_t(lay["row_order"], torch.long)
    users_t = as_t(lay["rank"][pairs["user"]], torch.long)
    pos_row, neg_row = as_t(lay["row_of"][pos_idx], torch.long), as_t(lay["row_of"][neg_idx],
                                                                       torch.long)
    weight = as_t(lay["weight"])
    P = as_t(user_emb)[as_t(lay["order"], torch.long)].contiguous()
    L = as_t(item_emb)[as_t(row_item[lay["row_order"]], torch.long)].contiguous()
    Lb = as_t(item_bias)[as_t(row_item[lay["row_order"]], torch.long)].contiguous()
    adam = cfg.optimizer == "adam"
    user_opt = PerUserOptimizer([P], [torch.arange(len(P), device=device)], len(P), cfg.lr,
                                cfg.weight_decay, adam)
    if user_opt_state is not None:
        user_opt.load_state({k: torch.as_tensor(v)[as_t(lay["order"], torch.long)]
                             for k, v in user_opt_state.items()})
    item_opt = PerUserOptimizer([L, Lb], [as_t(lay["row_owner"], torch.long)] * 2, len(P),
                                cfg.lr, cfg.weight_decay, adam)
    loss_sum = 0.0
    for t, s, e in step_bounds(pairs["step"]):
        n_act, n_rows = int(lay["active"][t]), int(lay["rows"][t])
        terms, grads = bpr_step_grads(P[:n_act], L[:n_rows], Lb[:n_rows], users_t[s:e],
                                      pos_row[s:e], neg_row[s:e], weight[s:e], cfg.reg)
        loss_sum += float(terms.sum())
        user_opt.step_leading([grads[0]], n_act)
        item_opt.step_leading([grads[1], grads[2]], n_act)
    out_rows = torch.empty_like(row_order)
    out_rows[row_order] = torch.arange(len(row_order), device=device)
    opt_state = {k: v[rank] for k, v in user_opt.state().items()}
    return LocalResult(
        user_emb=P[rank].cpu().numpy(),
        row_user=row_user,
        row_item=row_item,
        delta=(L[out_rows].cpu().numpy() - item_emb[row_item]),
        bias_delta=(Lb[out_rows].cpu().numpy() - item_bias[row_item]),
        loss_sum=loss_sum,
        num_pairs=len(pairs["user"]),
        triples=(bucket.users[pairs["user"]], pairs["pos"], pairs["neg"]),
        user_opt_state={k: v.cpu().numpy() for k, v in opt_state.items()},
    )


def _leading_layout(pairs: dict[str, np.ndarray], row_user: np.ndarray, n_users: int
                    ) -> dict[str, np.ndarray]:
    """Users ranked by their number of local steps (most first), rows grouped in that order.

    A user takes part in steps ``0..S_u-1`` (every batch of every local epoch holds at least
    one of its pairs), so the users active in step t are the first ``active[t]`` ranks and their
    rows the first ``rows[t]`` rows: :meth:`PerUserOptimizer.step_leading` updates leading
    slices. ``order[k]`` is the user of rank k, ``rank`` its inverse, ``row_order[k]`` the
    ``pair_rows`` row stored at position k and ``row_of`` its inverse, ``row_owner`` each
    stored row's rank; ``weight`` is ``1 / (pairs of the user in the step)`` per pair.
    """
    n_steps = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(n_steps, pairs["user"], pairs["step"] + 1)
    order = np.argsort(-n_steps, kind="stable")
    rank = np.empty(n_users, dtype=np.int64)
    rank[order] = np.arange(n_users)
    row_order = np.argsort(rank[row_user], kind="stable")
    row_of = np.empty(len(row_order), dtype=np.int64)
    row_of[row_order] = np.arange(len(row_order))
    row_owner = rank[row_user[row_order]]
    row_end = np.searchsorted(row_owner, np.arange(n_users + 1), side="left")
    horizon = int(n_steps.max(initial=0))
    active = (n_steps[None, :] > np.arange(horizon)[:, None]).sum(1)
    key = pairs["step"] * n_users + pairs["user"]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return {"order": order, "rank": rank, "row_order": row_order, "row_of": row_of,
            "row_owner": row_owner, "active": active, "rows": row_end[active],
            "weight": 1.0 / counts[inverse]}


def bpr_step_grads(P: torch.Tensor, L: torch.Tensor, Lb: torch.Tensor, user: torch.Tensor,
                   pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor, reg: float
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    r"""Per-triple BPR terms and the closed-form gradient of their weighted sum.

    With :math:`x = p_u^\top (q_i - q_j) + b_i - b_j`, term
    :math:`\ell = -\log\sigma(x) + \lambda(\lVert p_u\rVert^2 + \lVert q_i\rVert^2 +
    \lVert q_j\rVert^2)` (:func:`florec.models.mf.bpr_terms`) and loss
    :math:`\sum w \ell`, with :math:`c = -w \sigma(-x)`:

    .. math::

        \nabla_{p_u} \mathrel{+}= c (q_i - q_j) + 2 \lambda w p_u, \quad
        \nabla_{q_i} \mathrel{+}= c p_u + 2 \lambda w q_i, \quad
        \nabla_{q_j} \mathrel{+}= -c p_u + 2 \lambda w q_j, \quad
        \nabla_{b_i} \mathrel{+}= c, \quad \nabla_{b_j} \mathrel{+}= -c

    (what autograd gives for ``(weight * bpr_terms(...)).sum()``, without building a graph).

    Parameters
    ----------
    P, L, Lb : torch.Tensor
        User rows (n, d), item rows (m, d) and item biases (m,).
    user, pos, neg : torch.Tensor
        Per triple: the row of the user in ``P`` and of the positive and negative in ``L``.
    weight : torch.Tensor
        :math:`w` per triple.
    reg : float
        :math:`\lambda`.

    Returns
    -------
    (terms, (grad_P, grad_L, grad_Lb))
        The unweighted terms and the gradients, shaped like ``P``, ``L`` and ``Lb``.

    """
    pu, qi, qj = P[user], L[pos], L[neg]
    diff = qi - qj
    x = (pu * diff).sum(-1) + Lb[pos] - Lb[neg]
    terms = -F.logsigmoid(x)
    c = (-torch.sigmoid(-x) * weight)[:, None]
    g_pu, g_qi, g_qj = c * diff, c * pu, -c * pu
    if reg:
        terms = terms + reg * (pu.pow(2).sum(-1) + qi.pow(2).sum(-1) + qj.pow(2).sum(-1))
        w2 = (2 * reg) * weight[:, None]
        g_pu, g_qi, g_qj = g_pu + w2 * pu, g_qi + w2 * qi, g_qj + w2 * qj
    grad_p = torch.zeros_like(P).index_add_(0, user, g_pu)
    grad_l = torch.zeros_like(L).index_add_(0, pos, g_qi).index_add_(0, neg, g_qj)
    grad_b = torch.zeros_like(Lb).index_add_(0, pos, c[:, 0]).index_add_(0, neg, -c[:, 0])
    return terms, (grad_p, grad_l, grad_b)
