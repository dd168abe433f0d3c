"""MLPScorer: paired vs vectorised scoring, loss formula, training."""

import numpy as np
import pytest
import torch

from florec.models import mlp as mlp_mod
from florec.models.mlp import MLPScorer


def test_vectorised_scores_equal_a_per_item_loop():
    model = MLPScorer(5, 7, dim=4, seed=3, hidden=[6, 5])
    scores = model.score(torch.tensor([0, 2, 4]))
    loop = torch.stack([model.logits(torch.full((7,), u), torch.arange(7)) for u in (0, 2, 4)])
    assert scores.shape == (3, 7)
    torch.testing.assert_close(scores, loop, atol=1e-6, rtol=1e-5)


def test_chunked_scoring_equals_one_chunk(monkeypatch):
    model = MLPScorer(6, 7, dim=4, seed=1, hidden=8)
    full = model.score(torch.arange(6))
    monkeypatch.setattr(mlp_mod, "SCORE_CHUNK_ELEMS", 7 * 8 * 2)  # two users per chunk
    torch.testing.assert_close(model.score(torch.arange(6)), full)


def test_loss_is_half_bce_plus_l2():
    model = MLPScorer(4, 6, dim=3, seed=0, reg=0.01, hidden=4)
    u, i, j = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 5]), torch.tensor([0, 4, 4])
    ps, ns = torch.sigmoid(model.logits(u, i)), torch.sigmoid(model.logits(u, j))
    bce = 0.5 * (-torch.log(ps).mean() - torch.log(1 - ns).mean())
    emb = ((model.user_emb[u] ** 2).sum() + (model.item_emb[i] ** 2).sum()
           + (model.item_emb[j] ** 2).sum()) / 6
    w = sum((p ** 2).sum() for p in model.mlp.parameters())
    torch.testing.assert_close(model.loss(u, i, j), bce + 0.01 * (emb + w))


def test_adam_lowers_the_loss():
    model = MLPScorer(6, 10, dim=8, seed=0, reg=1e-4)
    g = torch.Generator().manual_seed(0)
    u, i, j = (torch.randint(0, n, (40,), generator=g) for n in (6, 10, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = float(model.loss(u, i, j).detach())
    for _ in range(50):
        opt.zero_grad()
        model.loss(u, i, j).backward()
        opt.step()
    assert float(model.loss(u, i, j).detach()) < first - 0.05


def test_same_seed_same_weights_and_shared_names():
    a, b, c = MLPScorer(3, 4, seed=5), MLPScorer(3, 4, seed=5), MLPScorer(3, 4, seed=6)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), b.state_dict()[k].numpy())
    assert not torch.equal(a.mlp[0].weight, c.mlp[0].weight)
    assert set(a.private_state()) == {"user_emb"}
    assert {"item_emb", "mlp.0.weight", "mlp.2.bias"} <= set(a.shared_state())


def test_unknown_kwargs_are_rejected():
    with pytest.raises(TypeError, match="layers"):
        MLPScorer(3, 4, dim=4, layers=3)
