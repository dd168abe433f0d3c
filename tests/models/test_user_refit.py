"""The MF user refit against a frozen item table (models/user_refit.py)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from florec.models.user_refit import refit_negative_blocks, refit_negatives, refit_user_emb


def _planted(n_users: int = 60, n_items: int = 80, dim: int = 8, per_user: int = 12,
             seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """Interactions drawn from a planted MF (each user's top items), with the true tables."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
    bias = rng.normal(scale=0.1, size=n_items)
    top = np.argsort(-(users @ items.T + bias), axis=1)[:, :per_user]
    rows = np.repeat(np.arange(n_users), per_user)
    train = sp.csr_matrix((np.ones(rows.size), (rows, top.ravel())), shape=(n_users, n_items))
    train.sort_indices()
    return train, users.astype(np.float32), items.astype(np.float32), bias.astype(np.float32)


def test_refit_matches_torch_adam_on_the_stated_loss() -> None:
    train, _, items, bias = _planted()
    ids = np.arange(train.shape[0]) + 100
    start = np.random.default_rng(1).normal(scale=0.1, size=(train.shape[0], 8))
    steps, lr, reg = 5, 0.05, 0.01
    got = refit_user_emb(train, ids, start, items, bias, steps, lr, reg, seed=3, server_round=2)
    # reference: autograd of sum_u mean_{i in I_u} -log sigma(x_uij) + reg |p_u|^2, torch Adam
    negatives = torch.from_numpy(refit_negatives(train, ids, steps, 3, 2))
    rows = torch.from_numpy(np.repeat(np.arange(train.shape[0]), np.diff(train.indptr)))
    pos = torch.from_numpy(train.indices.astype(np.int64))
    weight = 1.0 / torch.from_numpy(np.diff(train.indptr)).float()[rows]
    q, b = torch.from_numpy(items), torch.from_numpy(bias)
    p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
    opt = torch.optim.Adam([p], lr=lr)
    for s in range(steps):
        x = (p[rows] * (q[pos] - q[negatives[s]])).sum(-1) + b[pos] - b[negatives[s]]
        loss = (-F.logsigmoid(x) * weight).sum() + reg * p.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(got, p.detach().numpy(), atol=1e-5)


def test_refit_recovers_users_from_random_rows_against_the_true_items() -> None:
    train, _, items, bias = _planted()
    ids = np.arange(train.shape[0])
    start = np.random.default_rng(2).normal(scale=0.1, size=(train.shape[0], 8))

    def hit_rate(p: np.ndarray) -> float:  # share of each user's top-12 that is a train item
        top = np.argsort(-(p @ items.T + bias), axis=1)[:, :12]
        return float(np.take_along_axis(train.toarray(), top, axis=1).mean())

    refit = refit_user_emb(train, ids, start, items, bias, steps=100, lr=0.1)
    assert hit_rate(start) < 0.35
    assert hit_rate(refit) > 0.8


def test_refit_negatives_are_unseen_items() -> None:
    train, *_ = _planted()
    negatives = refit_negatives(train, np.arange(train.shape[0]), 4, 0, 1)
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    assert negatives.shape == (4, train.nnz)
    assert not np.asarray(train[rows[None].repeat(4, 0).ravel(), negatives.ravel()]).any()


def test_refit_of_a_subset_of_users_equals_their_rows_of_the_whole_refit() -> None:
    train, _, items, bias = _planted()
    ids = np.arange(train.shape[0]) * 7
    start = np.random.default_rng(4).normal(scale=0.1, size=(train.shape[0], 8))
    whole = refit_user_emb(train, ids, start, items, bias, 6, 0.05, seed=1, server_round=5)
    part = np.arange(10, 30)
    sub = refit_user_emb(train[part], ids[part], start[part], items, bias, 6, 0.05, seed=1,
                         server_round=5)
    np.testing.assert_allclose(sub, whole[part], atol=1e-6)


def test_users_without_pairs_and_zero_steps_keep_their_rows() -> None:
    train, _, items, bias = _planted()
    train = train.tolil()
    train[3] = 0
    train = train.tocsr()
    start = np.ones((train.shape[0], 8), np.float32)
    out = refit_user_emb(train, np.arange(train.shape[0]), start, items, bias, 3, 0.1, reg=0.1)
    np.testing.assert_array_equal(out[3], start[3])
    assert not np.allclose(out[4], start[4])
    np.testing.assert_array_equal(
        refit_user_emb(train, np.arange(train.shape[0]), start, items, bias, 0, 0.1), start)


def test_refit_refuses_mismatched_users() -> None:
    train, _, items, bias = _planted()
    with pytest.raises(ValueError, match="pass the same users"):
        refit_user_emb(train, np.arange(5), np.zeros((train.shape[0], 8)), items, bias, 2, 0.1)


def test_refit_negatives_do_not_depend_on_the_block_size() -> None:
    train = _planted()[0]
    ids = np.arange(train.shape[0]) + 7
    whole = refit_negatives(train, ids, 7, 4, 3)
    for max_draws in (1, train.nnz * 2, train.nnz * 3 + 1):
        blocks = list(refit_negative_blocks(train, ids, 7, 4, 3, max_draws=max_draws))
        assert max(len(b) for b in blocks) == max(1, max_draws // train.nnz)
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
