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

:meth:`PerUserOptimizer.step_leading` is the fast path of the bucket trainers: when users are
numbered so that the active ones are ``0..a-1`` and each parameter's rows are sorted by owner,
the active rows are a leading slice, updated in place with no mask, gather or scatter, by
``torch.optim.adam.adam(fused=True)`` when the active users share a step count.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as adam_step

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def fused_adam(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               step: torch.Tensor, lr: float, weight_decay: float) -> None:
    """One ``torch.optim.Adam`` step (fused kernel) of ``p`` and its moments, all in place.

    ``step`` is a float32 scalar tensor holding the step count *before* this step (the kernel
    increments it); ``g`` must have ``p``'s strides. Coupled weight decay, betas
    :data:`ADAM_BETAS`, epsilon :data:`ADAM_EPS`.
    """
    adam_step([p], [g], [m], [v], [], [step], fused=True, amsgrad=False, beta1=ADAM_BETAS[0],
              beta2=ADAM_BETAS[1], lr=lr, weight_decay=weight_decay, eps=ADAM_EPS,
              maximize=False)


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
            m = self.m[i] if self.adam else None
            v = self.v[i] if self.adam else None
            if bool(rows.all()):  # in place on the whole tensors
                self._update(p, g, m, v, self.steps[owner])
                continue
            sub_p = p[rows]
            sub_m, sub_v = (m[rows], v[rows]) if self.adam else (None, None)
            self._update(sub_p, g[rows], sub_m, sub_v, self.steps[owner[rows]])
            p[rows] = sub_p
            if self.adam:
                m[rows], v[rows] = sub_m, sub_v

    @torch.no_grad()
    def step_leading(self, grads: list[torch.Tensor], n_users: int) -> None:
        """One optimizer step of users ``0..n_users-1`` whose rows lead every parameter.

        Every owner tensor must be one-dimensional and sorted (non-decreasing), so the rows of
        the active users are the leading ``len(grads[i])`` rows of parameter ``i``; the result
        is that of :meth:`step` with ``active = arange(n_users_total) < n_users``.

        Parameters
        ----------
        grads : list of torch.Tensor
            Gradient of each parameter's leading rows (those of the active users), so
            ``grads[i]`` has ``p[:len(grads[i])]``'s shape.
        n_users : int
            The active users, ``0..n_users-1``.

        Raises
        ------
        ValueError
            A gradient's leading rows are not exactly the rows of the active users.

        """
        for i, (g, owner) in enumerate(zip(grads, self.owners, strict=True)):
            n = len(g)
            if n and int(owner[n - 1]) >= n_users or n < len(owner) and int(owner[n]) < n_users:
                raise ValueError(f"parameter {i}: its first {n} rows are not those of users "
                                 f"0..{n_users - 1}; sort the rows by owner")
        if n_users <= 0:
            return
        self.steps[:n_users] += 1
        steps = self.steps[:n_users]
        shared = float(steps[0]) if bool((steps == steps[0]).all()) else None
        for i, (p, g, owner) in enumerate(zip(self.params, grads, self.owners, strict=True)):
            n = len(g)
            if n == 0:
                continue
            sub_p = p[:n]
            if not self.adam:
                self._update(sub_p, g, None, None, steps)
            elif shared is not None:
                fused_adam(sub_p, g, self.m[i][:n], self.v[i][:n],
                           torch.tensor(shared - 1, dtype=torch.float32, device=p.device),
                           self.lr, self.wd)
            else:
                self._update(sub_p, g, self.m[i][:n], self.v[i][:n], self.steps[owner[:n]])

    def state(self) -> dict[str, torch.Tensor]:
        """The optimizer state: ``steps`` (per user) and, for Adam, moments ``m<i>``, ``v<i>``.

        With one parameter owned row-per-user (the private embeddings), every tensor has one row
        per user, so a node can keep it next to the embeddings across rounds.
        """
        out = {"steps": self.steps}
        for i, (m, v) in enumerate(zip(self.m, self.v, strict=True)):
            out[f"m{i}"], out[f"v{i}"] = m, v
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state` of an optimizer over parameters of the same shapes.

        Raises
        ------
        ValueError
            A tensor's shape differs from this optimizer's.

        """
        own = self.state()
        for key, cur in own.items():
            new = torch.as_tensor(state[key], dtype=cur.dtype, device=cur.device)
            if new.shape != cur.shape:
                raise ValueError(f"optimizer state '{key}' has shape {tuple(new.shape)}, "
                                 f"expected {tuple(cur.shape)}")
            cur.copy_(new)

    def _update(self, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor | None,
                v: torch.Tensor | None, t: torch.Tensor) -> None:
        """Update ``p`` (and the moments) in place; ``t`` is each row's user step count."""
        if self.wd:
            g = g.add(p, alpha=self.wd)
        if m is None or v is None:
            p.add_(g, alpha=-self.lr)
            return
        b1, b2 = ADAM_BETAS
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        t = t.view(*t.shape, *([1] * (p.dim() - t.dim())))
        bc1, bc2 = (1 - b1**t).to(p.dtype), (1 - b2**t).to(p.dtype)
        p.addcdiv_(m / bc1, (v / bc2).sqrt_().add_(ADAM_EPS), value=-self.lr)
