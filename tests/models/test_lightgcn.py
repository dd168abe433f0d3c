"""LightGCN: normalised graph, layer-mean propagation, loss, scoring cache."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.lightgcn import LightGCN, normalized_adjacency

R = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=np.float32))


def dense_adjacency(r):
    r = r.toarray().astype(np.float64)
    u, n = r.shape
    a = np.zeros((u + n, u + n))
    a[:u, u:], a[u:, :u] = r, r.T
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


def test_adjacency_is_symmetric_normalised_and_isolated_item_stays_zero():
    a = dense_adjacency(R)
    np.testing.assert_allclose(normalized_adjacency(R).toarray(), a, atol=1e-15)
    assert a[:, 3 + 3].sum() == 0  # item 3 has no interaction
    assert a[0, 3] == pytest.approx(1 / np.sqrt(2 * 2))  # user 0 (deg 2) - item 0 (deg 2)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_is_the_mean_of_layers_of_a_dense_reference(layers):
    model = LightGCN(3, 4, dim=5, seed=1, layers=layers).fit(R)
    a = dense_adjacency(R)
    x = np.vstack([model.user_emb.detach().numpy(), model.item_emb.detach().numpy()])
    x = x.astype(np.float64)
    ref = sum(np.linalg.matrix_power(a, k) @ x for k in range(layers + 1)) / (layers + 1)
    users, items = model.propagate()
    np.testing.assert_allclose(users.detach().numpy(), ref[:3], atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), ref[3:], atol=1e-6)
    np.testing.assert_allclose(model.score(torch.arange(3)).detach().numpy(), ref[:3] @ ref[3:].T,
                               atol=1e-6)


def test_zero_layers_scores_with_the_ego_tables():
    model = LightGCN(3, 4, dim=5, layers=0).fit(R)
    torch.testing.assert_close(model.score(torch.tensor([1])),
                               model.user_emb[[1]] @ model.item_emb.T)


def test_loss_matches_the_formula():
    model = LightGCN(3, 4, dim=5, seed=2, reg=0.1, layers=2).fit(R)
    users, pos, neg = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 0]), torch.tensor([3, 0, 1])
    pu, ei = model.propagate()
    su = (pu[users] * ei[pos]).sum(1)
    sj = (pu[users] * ei[neg]).sum(1)
    ego = (model.user_emb[users] ** 2).sum() + (model.item_emb[pos] ** 2).sum() \
        + (model.item_emb[neg] ** 2).sum()
    expected = torch.nn.functional.softplus(sj - su).mean() + 0.1 * 0.5 * ego / 3
    torch.testing.assert_close(model.loss(users, pos, neg), expected)


def test_adam_lowers_the_loss():
    model = LightGCN(3, 4, dim=8, seed=0, reg=1e-3).fit(R)
    users, pos, neg = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 2, 0]), \
        torch.tensor([3, 2, 3, 0, 3])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = float(model.loss(users, pos, neg).detach())
    for _ in range(20):
        opt.zero_grad()
        model.loss(users, pos, neg).backward()
        opt.step()
    assert float(model.loss(users, pos, neg).detach()) < 0.5 * first


def test_eval_cache_follows_parameter_changes():
    model = LightGCN(3, 4, dim=4, seed=0).fit(R)
    model.eval()
    with torch.no_grad():
        before = model.score(torch.arange(3))
        assert model.score(torch.arange(3)) is not before
        torch.testing.assert_close(model.score(torch.arange(3)), before)
        model.load_shared_state({"item_emb": np.ones((4, 4), dtype=np.float32)})
        after = model.score(torch.arange(3))
    model.train()
    torch.testing.assert_close(after, model.score(torch.arange(3)).detach())
    assert not torch.allclose(after, before)


def test_graph_is_private_and_required():
    model = LightGCN(3, 4, dim=4)
    with pytest.raises(RuntimeError, match="fit"):
        model.score(torch.arange(3))
    with pytest.raises(ValueError, match="shape"):
        model.fit(R[:2])
    model.fit(R)
    assert set(model.state_dict()) == {"user_emb", "item_emb"}
    assert set(model.shared_state()) == {"item_emb"}


def test_unknown_kwargs_are_rejected():
    with pytest.raises(TypeError, match="hidden"):
        LightGCN(3, 4, dim=4, layers=2, hidden=32)


def test_reg_is_l2_on_the_batch_ego_rows_counted_per_occurrence():
    """Hand-made batch: lambda/2 * (sum of squared layer-0 rows, duplicates counted) / |B|.

    As in the LightGCN authors' code (``reg_loss`` on ``userEmb0, posEmb0, negEmb0``): the
    propagated rows and the rows outside the batch get no L2 gradient.
    """
    ego_u = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    ego_i = torch.tensor([[5.0, 5.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    users, pos, neg = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([3, 3])
    grads, losses = [], []
    for reg in (0.5, 0.0):
        model = LightGCN(3, 4, dim=2, reg=reg, layers=2).fit(R)
        with torch.no_grad():
            model.user_emb.copy_(ego_u)
            model.item_emb.copy_(ego_i)
        loss = model.loss(users, pos, neg)
        loss.backward()
        losses.append(float(loss))
        grads.append((model.user_emb.grad.clone(), model.item_emb.grad.clone()))
    # ||u0||^2 twice (5 + 5) + ||i1||^2 (1) + ||i2||^2 (4) + ||i3||^2 twice (2 + 2) = 19
    assert losses[0] - losses[1] == pytest.approx(0.5 * 0.5 * 19 / 2, rel=1e-6)
    d_user, d_item = grads[0][0] - grads[1][0], grads[0][1] - grads[1][1]
    # d/dx of lambda/(2|B|) * c * ||x||^2 = lambda * c * x / |B| (c = occurrences in the batch)
    torch.testing.assert_close(d_user, torch.tensor([[0.5, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(d_item, torch.tensor([[0.0, 0.0], [0.0, 0.25], [0.5, 0.0],
                                                     [0.5, 0.5]]))
