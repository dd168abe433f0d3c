r"""The point losses of ``mf-loss`` (fs-point, wmf, relmf, du) on a bucket, one client per user.

Every user u holds p_u and its own copy of the whole item table, with its own optimizer
(``torch.optim.Adam`` or ``SGD``, coupled weight decay). A local epoch visits the items in a
seeded order in chunks of ``local-batch-size``; step t is one step of every user's optimizer,
with gradient on the chunk's rows only. As in ``torch.optim.Adam``, every other row still moves
at step t, through its moments and weight decay (:math:`g = \lambda q`): a "coasting" update
that depends on nothing but the row's own (q, m, v) and t.

So the coasting of a chunk's rows can be deferred, exactly: the rows are stored item-major,
``(n_items, B, d)``, permuted at each epoch so that every chunk is a contiguous slice, and a
chunk's pending coasting steps run on that slice (which fits in cache) right before its
gradient step, the rest at the end of the epoch. Each row gets the same update, with the same
t, in the same order as the eager loop over the whole table; only the order across rows, which
do not interact, changes. The gradient needs no graph over the tables
(:func:`point_step_grads`).
"""

from __future__ import annotations

import numpy as np
import torch

from florec.client.trainers.bpr_embedding import LocalConfig
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.user_adam import PerUserOptimizer, fused_adam
from florec.models import fair_losses as fair
from florec.recdata.seeds import Salt, stream


def point_terms(loss: str, logits: torch.Tensor, y: torch.Tensor, pop: torch.Tensor,
                 theta: torch.Tensor, n_users: int) -> torch.Tensor:
    """The point loss ``loss`` (fs-point, wmf, relmf or du) of ``logits`` against labels ``y``.

    Parameters
    ----------
    loss : str
        The ``mf-loss`` name.
    logits, y, pop, theta : torch.Tensor
        Scores, 0/1 labels, item popularity and exposure propensity, broadcast together.
    n_users : int
        Number of users (FS-Point's weights use it).

    Returns
    -------
    torch.Tensor
        The loss summed over all entries (a scalar; :mod:`florec.models.fair_losses` has each
        formula).
    """
    if loss == "fs-point":
        return fair.weighted_point_loss(logits, y, fair.fs_point_weights(y, pop, n_users))
    if loss == "wmf":
        return fair.wmf_loss(logits, y)
    if loss == "relmf":
        return fair.relmf_loss(logits, y, theta)
    return fair.du_loss(logits, y, theta, fair.negative_propensity(theta))


def point_step_grads(loss: str, P: torch.Tensor, Lc: torch.Tensor, y: torch.Tensor,
                     pop: torch.Tensor, theta: torch.Tensor, n_users: int
                     ) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""A point loss over every (user, chunk item) cell and its gradient, without a table graph.

    With scores :math:`s_{ui} = p_u^\top q_{ui}` (user u's own copy of item i) and
    :math:`g_{ui} = \partial L / \partial s_{ui}` (autograd over the ``(B, m)`` scores only):

    .. math:: \nabla_{p_u} L = \sum_i g_{ui}\, q_{ui}, \qquad \nabla_{q_{ui}} L = g_{ui}\, p_u

    Parameters
    ----------
    loss : str
        ``fs-point``, ``wmf``, ``relmf`` or ``du`` (:mod:`florec.models.fair_losses`).
    P : torch.Tensor
        The users' embeddings ``(B, d)``.
    Lc : torch.Tensor
        The users' copies of the chunk's items, item-major ``(m, B, d)``.
    y : torch.Tensor
        Labels ``(B, m)``.
    pop, theta : torch.Tensor
        Popularity and propensity of the chunk's items ``(m,)``.
    n_users : int
        U, for FS-Point's weights.

    Returns
    -------
    (loss, grad_P, grad_Lc)
        The summed loss and the gradients, shaped like ``P`` and ``Lc``.

    """
    logits = torch.einsum("bd,mbd->bm", P, Lc).requires_grad_(True)
    b = len(P)
    value = point_terms(loss, logits, y, pop.expand(b, -1), theta.expand(b, -1), n_users)
    (g_s,) = torch.autograd.grad(value, logits)
    g_p = torch.einsum("bm,mbd->bd", g_s, Lc)
    return float(value.detach()), g_p, g_s.t().contiguous()[..., None] * P[None]


class _ItemRowsOptimizer:
    """Every user's optimizer over its item copies, one contiguous chunk of rows at a time.

    All users take part in every step, so they share the step count t and a chunk's update is
    ``torch.optim.Adam``'s (fused) or ``SGD``'s on the slice, as
    :meth:`PerUserOptimizer.step_leading` would do on the whole table.
    """

    def __init__(self, rows: torch.Tensor, lr: float, weight_decay: float, adam: bool,
                 chunk: int) -> None:
        self.rows, self.lr, self.wd, self.adam = rows, lr, weight_decay, adam
        self.m = torch.zeros_like(rows) if adam else None
        self.v = torch.zeros_like(rows) if adam else None
        self.zero = torch.zeros((chunk, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        self.t = torch.zeros((), dtype=torch.float32, device=rows.device)

    def permute(self, where: torch.Tensor) -> None:
        """Store row ``where[k]`` at position k (rows and moments)."""
        self.rows = self.rows[where]
        if self.m is not None and self.v is not None:
            self.m, self.v = self.m[where], self.v[where]

    def step(self, s: int, e: int, t: int, grad: torch.Tensor | None = None) -> None:
        """Step t of rows ``s:e``; ``grad`` None is the coasting step (zero gradient)."""
        p = self.rows[s:e]
        # fused Adam reads the gradient with the parameter's (contiguous) strides
        g = self.zero[: e - s] if grad is None else grad.contiguous()
        if self.m is None or self.v is None:
            if grad is not None or self.wd:
                p.add_(g.add(p, alpha=self.wd) if self.wd else g, alpha=-self.lr)
            return
        fused_adam(p, g, self.m[s:e], self.v[s:e], self.t.fill_(t - 1), self.lr, self.wd)


def fair_point(bucket: Bucket, item_emb: np.ndarray, user_emb: np.ndarray, cfg: LocalConfig,
               server_round: int, device: str, pop: torch.Tensor, n_users: int
               ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Point-wise losses over **all** items of each user: the closed form of FS-Point.

    Each local epoch visits the items in a seeded order (the same for every user, keyed by the
    seed, round and epoch) in chunks of ``local_batch_size``; a step is one step of every
    user's optimizer over p_u and the user's copy of the item table (the gradient reaches the
    chunk's rows only; the others coast, deferred as the module docstring says).

    Returns
    -------
    (user_emb, delta, loss_sum, n_terms)
        New private embeddings ``(B, d)``, the change of every user's item copy against
        ``item_emb`` as ``(B * n_items, d)`` rows in (user, item) order, the summed loss and
        the number of (user, item) terms.

    """
    n_items, b = bucket.n_items, len(bucket.users)
    batch = cfg.local_batch_size
    P = torch.as_tensor(user_emb, dtype=torch.float32, device=device).clone()
    user_opt = PerUserOptimizer([P], [torch.arange(b, device=device)], b, cfg.lr,
                                cfg.weight_decay, cfg.optimizer == "adam")
    L0 = torch.as_tensor(item_emb, dtype=torch.float32, device=device)
    items: _ItemRowsOptimizer | None = None
    y_all = torch.as_tensor(bucket.train.toarray() > 0, device=device).to(torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    stored = torch.arange(n_items, device=device)  # the item at each stored position
    bounds = [(s, min(s + batch, n_items)) for s in range(0, n_items, batch)]
    loss_sum, t = 0.0, 0
    for epoch in range(cfg.local_epochs):
        order = torch.as_tensor(stream(cfg.seed, Salt.FAIR_ITEM_ORDER, server_round, epoch)
                                .permutation(n_items), device=device)
        if items is None:  # every user's copy starts as the global table, moments at 0
            items = _ItemRowsOptimizer(L0[order, None, :].expand(-1, b, -1).clone(), cfg.lr,
                                       cfg.weight_decay, cfg.optimizer == "adam",
                                       min(batch, n_items))
        else:
            position = torch.empty_like(stored)
            position[stored] = torch.arange(n_items, device=device)
            items.permute(position[order])
        stored = order
        y, pop_o, theta_o = y_all[:, order], pop[order], theta[order]
        start = t
        for s, e in bounds:
            t += 1
            for pending in range(start + 1, t):
                items.step(s, e, pending)
            value, g_p, g_l = point_step_grads(cfg.mf_loss, P, items.rows[s:e], y[:, s:e],
                                               pop_o[s:e], theta_o[s:e], n_users)
            loss_sum += value
            user_opt.step_leading([g_p], b)
            items.step(s, e, t, g_l)
        for k, (s, e) in enumerate(bounds):
            for pending in range(start + k + 2, t + 1):
                items.step(s, e, pending)
    if items is None:  # no local epoch: nothing moved
        return user_emb.copy(), np.zeros((b * n_items, L0.shape[1]), np.float32), 0.0, 0
    position = torch.empty_like(stored)
    position[stored] = torch.arange(n_items, device=device)
    delta = torch.empty((b, n_items, L0.shape[1]), device=device)
    delta.copy_(items.rows[position].transpose(0, 1)).sub_(L0)
    return (P.cpu().numpy(), delta.reshape(b * n_items, -1).cpu().numpy(), loss_sum,
            b * n_items * cfg.local_epochs)
