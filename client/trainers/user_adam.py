r"""One optimizer per logical client, vectorised: Adam (or SGD) over rows that belong to users.

The embedding trainers keep every user's parameters in shared tensors: row ``r`` of a tensor
belongs to user ``owner[r]`` (a user's embedding, or the user's own copy of an item row). Each
user is a separate client with its own optimizer, so a step of :class:`PerUserOptimizer` does
exactly what ``torch.optim.Adam(user_params, lr, betas, eps, weight_decay)`` (or
``torch.optim.SGD``) would do, user by user, for the users active in that step:

.. math::

    g \leftarrow g + \lambda p, \quad m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
    p \leftarrow p - \eta \, \hat m / (\sqrt{\hat v} + \epsilon), \quad
    \hat m = m / (1-\beta_1^{t_u}), \quad \hat v = v / (1-\beta_2^{t_u})

on **every** row of an active user (rows without gradient in the step still move by their
moments, as in ``torch.optim.Adam``), where :math:`t_u` counts the steps user u took part in.
Rows of inactive users are left as they are (their user's optimizer did not step).
"""

from __future__ import annotations

import torch

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class PerUserOptimizer:
    """``torch.optim.Adam`` / ``SGD`` per user over the rows each user owns.

    Parameters
    ----------
    params : list of torch.Tensor
        Parameter tensors, updated in place (no autograd needed on them).
    owners : list of torch.Tensor
        For each parameter, the owning user (long) of each row: a tensor of the shape of the
        parameter's leading dimensions (``p.shape[:owner.ndim]``).
    n_users : int
        Number of users (owner ids lie in ``0..n_users-1``).
    lr, weight_decay : float
        As in ``torch.optim.Adam`` (coupled L2: ``weight_decay * p`` joins the gradient).
    adam : bool
        Adam if true, plain SGD otherwise.

    """

    def __init__(self, params: list[torch.Tensor], owners: list[torch.Tensor], n_users: int,
                 lr: float, weight_decay: float = 0.0, adam: bool = True) -> None:
        if len(params) != len(owners):
            raise ValueError(f"{len(params)} parameters but {len(owners)} owner tensors")
        for p, owner in zip(params, owners, strict=True):
            if tuple(p.shape[:owner.ndim]) != tuple(owner.shape):
                raise ValueError(f"owner shape {tuple(owner.shape)} does not lead parameter "
                                 f"shape {tuple(p.shape)}")
        self.params, self.owners = params, owners
        self.lr, self.wd, self.adam = lr, weight_decay, adam
        device = params[0].device if params else None
        self.steps = torch.zeros(n_users, dtype=torch.float64, device=device)
        self.m = [torch.zeros_like(p) for p in params] if adam else []
        self.v = [torch.zeros_like(p) for p in params] if adam else []

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], active: torch.Tensor) -> None:
        """One optimizer step of every user with ``active[user]`` true.

        Parameters
        ----------
        grads : list of torch.Tensor
            Gradient of each parameter (zero where a row got none).
        active : torch.Tensor
            Boolean ``(n_users,)``.

        """
        self.steps[active] += 1
        for i, (p, g, owner) in enumerate(zip(self.params, grads, self.owners, strict=True)):
            rows = active[owner]
            if not bool(rows.any()):
                continue
            everyone = bool(rows.all())
            at = (...,) if everyone else rows
            g_rows = g[at] + self.wd * p[at] if self.wd else g[at]
            if not self.adam:
                p[at] = p[at] - self.lr * g_rows
                continue
            b1, b2 = ADAM_BETAS
            m = self.m[i][at].mul_(b1).add_(g_rows, alpha=1 - b1)
            v = self.v[i][at].mul_(b2).addcmul_(g_rows, g_rows, value=1 - b2)
            self.m[i][at], self.v[i][at] = m, v
            t = self.steps[owner[at]].view(-1, *([1] * (p.dim() - owner.dim())))
            if everyone:
                t = self.steps[owner].view(*owner.shape, *([1] * (p.dim() - owner.dim())))
            bc1 = (1 - b1 ** t).to(p.dtype)
            bc2 = (1 - b2 ** t).to(p.dtype)
            p[at] = p[at] - self.lr * (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS)
