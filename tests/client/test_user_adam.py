"""The per-user optimizer equals torch.optim.Adam / SGD run user by user on that user's rows."""

import numpy as np
import pytest
import torch

from florec.client.trainers.user_adam import PerUserOptimizer

N_USERS, D = 5, 3


def problem(seed=0):
    """A user table (one row each), item-row copies owned by users, and a 2-D owned table."""
    gen = torch.Generator().manual_seed(seed)
    rows_owner = torch.tensor([0, 0, 1, 2, 2, 2, 4, 3])
    params = [torch.randn(N_USERS, D, generator=gen),
              torch.randn(len(rows_owner), D, generator=gen),
              torch.randn(N_USERS, 4, D, generator=gen)]
    owners = [torch.arange(N_USERS), rows_owner, torch.arange(N_USERS)[:, None].expand(-1, 4)]
    steps = []
    for t in range(7):
        active = torch.rand(N_USERS, generator=gen) < 0.6
        active[t % N_USERS] = True
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        grads[1][torch.rand(len(rows_owner), generator=gen) < 0.3] = 0.0  # rows without gradient
        steps.append((active, grads))
    return params, owners, steps


def per_user_reference(params, owners, steps, make_opt):
    """torch's own optimizer, one per user, stepped only when the user is active."""
    out = [p.clone() for p in params]
    for u in range(N_USERS):
        mine = [owner == u for owner in owners]
        leaves = [p[m].clone().requires_grad_(True) for p, m in zip(params, mine, strict=True)]
        opt = make_opt(leaves)
        for active, grads in steps:
            if not active[u]:
                continue
            for leaf, g, m in zip(leaves, grads, mine, strict=True):
                leaf.grad = g[m].clone()
            opt.step()
        for o, leaf, m in zip(out, leaves, mine, strict=True):
            o[m] = leaf.detach()
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_per_user_adam_equals_torch_adam_run_user_by_user(weight_decay):
    params, owners, steps = problem()
    ref = per_user_reference(params, owners, steps, lambda leaves: torch.optim.Adam(
        leaves, lr=0.1, weight_decay=weight_decay))
    mine = [p.clone() for p in params]
    opt = PerUserOptimizer(mine, owners, N_USERS, lr=0.1, weight_decay=weight_decay)
    for active, grads in steps:
        opt.step(grads, active)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)
    assert not torch.equal(mine[0], params[0])


def test_per_user_sgd_equals_torch_sgd_run_user_by_user():
    params, owners, steps = problem(1)
    ref = per_user_reference(params, owners, steps, lambda leaves: torch.optim.SGD(
        leaves, lr=0.1, weight_decay=0.05))
    mine = [p.clone() for p in params]
    opt = PerUserOptimizer(mine, owners, N_USERS, lr=0.1, weight_decay=0.05, adam=False)
    for active, grads in steps:
        opt.step(grads, active)
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_an_inactive_user_keeps_its_rows():
    params, owners, steps = problem(2)
    mine = [p.clone() for p in params]
    opt = PerUserOptimizer(mine, owners, N_USERS, lr=0.1)
    only_first = torch.zeros(N_USERS, dtype=torch.bool)
    only_first[0] = True
    opt.step(steps[0][1], only_first)
    for p, start, owner in zip(mine, params, owners, strict=True):
        torch.testing.assert_close(p[owner != 0], start[owner != 0], rtol=0, atol=0)


def test_owner_shape_must_lead_the_parameter():
    with pytest.raises(ValueError, match="owner shape"):
        PerUserOptimizer([torch.zeros(4, 2)], [torch.arange(3)], 3, lr=0.1)
