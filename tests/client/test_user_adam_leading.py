"""The leading-slice step of the per-user optimizer equals torch.optim.Adam / SGD user by user."""

import numpy as np
import pytest
import torch

from florec.client.trainers.user_adam import PerUserOptimizer

N_USERS, D = 6, 3
#: rows owned by each user, sorted by owner (the bucket trainer's layout)
ROW_OWNER = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5])


def problem(seed=0, n_steps=6):
    """Users active in steps 0..S_u-1 (S decreasing in the user id), a user table, item rows."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(N_USERS, D, generator=gen), torch.randn(len(ROW_OWNER), D, generator=gen),
              torch.randn(len(ROW_OWNER), generator=gen)]
    owners = [torch.arange(N_USERS), ROW_OWNER, ROW_OWNER]
    n_steps_of = torch.tensor([6, 6, 4, 3, 1, 1])
    steps = []
    for t in range(n_steps):
        active = n_steps_of > t
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for g, owner in zip(grads, owners, strict=True):
            g[~active[owner]] = 0.0
        grads[1][torch.rand(len(ROW_OWNER), generator=gen) < 0.3] = 0.0  # rows without gradient
        steps.append((active, grads))
    return params, owners, steps


def per_user_reference(params, owners, steps, make_opt, warm_steps=None):
    """One torch optimizer per user over its rows, stepped when the user is active.

    ``warm_steps[u]`` warm-up steps (gradient one) first give users different step counts.
    """
    out = [p.clone() for p in params]
    for u in range(N_USERS):
        mine = [owner == u for owner in owners]
        leaves = [p[m].clone().requires_grad_(True) for p, m in zip(params, mine, strict=True)]
        opt = make_opt(leaves)
        for _ in range(0 if warm_steps is None else int(warm_steps[u])):
            for leaf in leaves:
                leaf.grad = torch.ones_like(leaf)
            opt.step()
        for active, grads in steps:
            if not active[u]:
                continue
            for leaf, g, m in zip(leaves, grads, mine, strict=True):
                leaf.grad = g[m].clone()
            opt.step()
        for o, leaf, m in zip(out, leaves, mine, strict=True):
            o[m] = leaf.detach()
    return out


def run_leading(opt, owners, steps):
    for active, grads in steps:
        n = int(active.sum())
        opt.step_leading([g[: int((owner < n).sum())] for g, owner in zip(grads, owners,
                                                                          strict=True)], n)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_leading_adam_equals_torch_adam_run_user_by_user(weight_decay):
    params, owners, steps = problem()
    ref = per_user_reference(params, owners, steps, lambda leaves: torch.optim.Adam(
        leaves, lr=0.1, weight_decay=weight_decay))
    mine = [p.clone() for p in params]
    run_leading(PerUserOptimizer(mine, owners, N_USERS, lr=0.1, weight_decay=weight_decay),
                owners, steps)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)
    assert not torch.equal(mine[1], params[1])


def test_leading_adam_with_different_step_counts_per_user_equals_torch_adam():
    """Users that bring different step counts (a kept optimizer state) take the per-row path."""
    params, owners, steps = problem(1)
    warm = torch.tensor([2, 0, 1, 3, 0, 1])
    ref = per_user_reference(params, owners, steps,
                             lambda leaves: torch.optim.Adam(leaves, lr=0.1), warm)
    mine = [p.clone() for p in params]
    opt = PerUserOptimizer(mine, owners, N_USERS, lr=0.1)
    for k in range(int(warm.max())):  # the same warm-up through step()
        opt.step([torch.ones_like(p) for p in mine], warm > k)
    run_leading(opt, owners, steps)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_leading_sgd_equals_torch_sgd_run_user_by_user():
    params, owners, steps = problem(2)
    ref = per_user_reference(params, owners, steps, lambda leaves: torch.optim.SGD(
        leaves, lr=0.1, weight_decay=0.05))
    mine = [p.clone() for p in params]
    run_leading(PerUserOptimizer(mine, owners, N_USERS, lr=0.1, weight_decay=0.05, adam=False),
                owners, steps)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_leading_step_equals_masked_step():
    params, owners, steps = problem(3)
    a, b = [p.clone() for p in params], [p.clone() for p in params]
    run_leading(PerUserOptimizer(a, owners, N_USERS, lr=0.05), owners, steps)
    masked = PerUserOptimizer(b, owners, N_USERS, lr=0.05)
    for active, grads in steps:
        masked.step(grads, active)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=0, atol=1e-6)


def test_leading_rows_that_are_not_the_active_users_are_refused():
    params, owners, _ = problem()
    opt = PerUserOptimizer(params, owners, N_USERS, lr=0.1)
    with pytest.raises(ValueError, match="sort the rows by owner"):
        opt.step_leading([torch.zeros(2, D), torch.zeros(4, D), torch.zeros(4)], 2)
