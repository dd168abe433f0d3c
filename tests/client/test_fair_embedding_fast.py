"""The leading-slice fair-loss trainer equals the per-step autograd trainer it replaced.

``reference_fair_pair`` and ``reference_fair_point`` below are the previous ``fair_local_update``
(before issue 17 part 1), kept here on CPU as the reference: per step an autograd graph over the
tables and :meth:`PerUserOptimizer.step` under a mask. The package's trainer
(:mod:`florec.client.trainers.fair_embedding`) must give the same private embeddings, item-row
deltas and loss, user by user, for every pair and point loss it serves.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.client.trainers.bpr_embedding import LocalConfig, build_pairs, pair_rows, step_bounds
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.fair_embedding import fair_local_update, popular_unseen
from florec.client.trainers.fair_point import point_terms
from florec.client.trainers.user_adam import PerUserOptimizer
from florec.models import fair_losses as fair
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.recdata.seeds import Salt, stream
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic

D = 8


def reference_fair_point(bucket, item_emb, user_emb, cfg, server_round, pop, n_users):
    """The previous point-loss trainer: autograd over (b, I, d) copies, masked Adam."""
    n_items, b = bucket.n_items, len(bucket.users)
    P = torch.as_tensor(user_emb, dtype=torch.float32).clone()
    L = torch.as_tensor(item_emb, dtype=torch.float32).expand(b, -1, -1).clone()
    y_all = torch.as_tensor(bucket.train.toarray() > 0).to(torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    everyone = torch.arange(b)
    opt = PerUserOptimizer([P, L], [everyone, everyone[:, None].expand(b, n_items)], b, cfg.lr,
                           cfg.weight_decay, cfg.optimizer == "adam")
    all_active = torch.ones(b, dtype=torch.bool)
    loss_sum = 0.0
    for epoch in range(cfg.local_epochs):
        order = stream(cfg.seed, Salt.FAIR_ITEM_ORDER, server_round, epoch).permutation(n_items)
        for s in range(0, n_items, cfg.local_batch_size):
            c = torch.as_tensor(order[s : s + cfg.local_batch_size])
            P.requires_grad_(True)
            L.requires_grad_(True)
            logits = torch.einsum("bd,bmd->bm", P, L[:, c])
            loss = point_terms(cfg.mf_loss, logits, y_all[:, c], pop[c].expand(b, -1),
                                theta[c].expand(b, -1), n_users)
            g_p, g_l = torch.autograd.grad(loss, (P, L))
            P.requires_grad_(False)
            L.requires_grad_(False)
            loss_sum += float(loss.detach())
            opt.step([g_p, g_l], all_active)
    delta = (L.numpy() - item_emb[None]).reshape(b * n_items, -1)
    rows = (np.repeat(np.arange(b), n_items), np.tile(np.arange(n_items), b))
    return P.numpy(), rows, delta, loss_sum


def reference_pop_negatives(bucket, users, item_pop, seed, server_round):
    """The previous ``pop_negatives`` (one scan of ``users`` per user)."""
    out = np.empty(len(users), dtype=np.int64)
    pop = np.asarray(item_pop, dtype=np.float64)
    for j in np.unique(users):
        at = np.flatnonzero(users == j)
        out[at] = popular_unseen(bucket, j, pop, len(at), seed, server_round)
    return out


def reference_fair_pair(bucket, item_emb, user_emb, cfg, server_round, item_pop):
    """The previous pair-loss trainer: per step clones + autograd graph, masked Adam."""
    pop = torch.as_tensor(np.asarray(item_pop, dtype=np.float32))
    b, n_items = len(bucket.users), bucket.n_items
    pairs = build_pairs(bucket, cfg, server_round)
    if cfg.mf_loss == "fs-pair":
        pairs["neg"] = reference_pop_negatives(bucket, pairs["user"], item_pop, cfg.seed,
                                               server_round)
    else:
        draws = [stream(cfg.seed, Salt.UBPR_ITEMS, server_round, bucket.users[j])
                 .integers(n_items, size=int((pairs["user"] == j).sum())) for j in range(b)]
        pairs["neg"] = np.empty(len(pairs["user"]), dtype=np.int64)
        for j in range(b):
            pairs["neg"][pairs["user"] == j] = draws[j]
    row_user, row_item, pos_idx, neg_idx = pair_rows(pairs, n_items)
    as_t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt)  # noqa: E731
    users_t, pos_row, neg_row = as_t(pairs["user"]), as_t(pos_idx), as_t(neg_idx)
    P = as_t(user_emb, torch.float32).clone()
    L = as_t(item_emb[row_item], torch.float32).clone()
    y_neg = as_t(bucket.train[pairs["user"], pairs["neg"]].A1 > 0, torch.float32)
    theta = fair.propensity(pop, cfg.ips_beta)
    items_pos, items_neg = as_t(pairs["pos"]), as_t(pairs["neg"])
    opt = PerUserOptimizer([P, L], [torch.arange(b), as_t(row_user)], b, cfg.lr,
                           cfg.weight_decay, cfg.optimizer == "adam")
    loss_sum = 0.0
    for _, s, e in step_bounds(pairs["step"]):
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
        active = torch.zeros(b, dtype=torch.bool)
        active[uu] = True
        opt.step([g_p, g_l], active)
    return P.numpy(), (row_user, row_item), L.numpy() - item_emb[row_item], loss_sum


@pytest.fixture(scope="module")
def split():
    """40 users of skewed activity (some with a single interaction), 50 items."""
    return make_split(generate_synthetic(n_users=40, n_items=50, seed=3), "ratio", seed=0)


def _inputs(split, users):
    bucket = Bucket.from_split(split, users)
    item_emb = MF(0, split.n_items, dim=D, seed=0).item_emb.detach().numpy()
    user_emb = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    pop = np.asarray(split.matrix("train").sum(0)).ravel().astype(np.float32)
    return bucket, item_emb, user_emb, pop


def _assert_user_by_user(new, ref_p, ref_rows, ref_delta, ref_loss):
    assert np.abs(ref_delta).max() > 1e-3  # the reference moved 100x the tolerance: not vacuous
    np.testing.assert_allclose(new.user_emb, ref_p, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(new.row_user, ref_rows[0])
    np.testing.assert_array_equal(new.row_item, ref_rows[1])
    for j in np.unique(ref_rows[0]):
        mine = ref_rows[0] == j
        np.testing.assert_allclose(new.delta[mine], ref_delta[mine], rtol=0, atol=1e-5)
    assert new.loss_sum == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("loss", ["fs-pair", "ubpr"])
def test_pair_losses_equal_the_autograd_trainer_user_by_user(split, loss, optimizer):
    cfg = LocalConfig(local_epochs=2, local_batch_size=3, optimizer=optimizer, lr=0.05,
                      mf_loss=loss, weight_decay=1e-3, ips_beta=0.7)
    bucket, item_emb, user_emb, pop = _inputs(split, np.arange(split.n_users))
    new = fair_local_update(bucket, item_emb, np.zeros(split.n_items, np.float32), user_emb,
                            cfg, 2, item_pop=pop, n_users=split.n_users)
    steps = np.diff(bucket.train.indptr)
    assert len(np.unique(-(-steps // 3))) > 2  # users stop at different steps
    if loss == "ubpr":  # the IPS weights are not all 1, and some pairs have negative weight
        theta = fair.propensity(torch.as_tensor(pop), cfg.ips_beta).numpy()
        y = bucket.train[new.triples[0], new.triples[2]].A1 > 0
        w = (1 / theta[new.triples[1]]) * (1 - y / theta[new.triples[2]])
        assert (w < 0).any() and (np.abs(w - 1) > 0.1).mean() > 0.5
    _assert_user_by_user(new, *reference_fair_pair(bucket, item_emb, user_emb, cfg, 2, pop))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("loss", ["fs-point", "wmf", "relmf", "du"])
def test_point_losses_equal_the_autograd_trainer_user_by_user(split, loss, optimizer):
    cfg = LocalConfig(local_epochs=2, local_batch_size=16, optimizer=optimizer, lr=0.05,
                      mf_loss=loss, weight_decay=1e-3, ips_beta=0.7)
    bucket, item_emb, user_emb, pop = _inputs(split, np.arange(12))
    new = fair_local_update(bucket, item_emb, np.zeros(split.n_items, np.float32), user_emb,
                            cfg, 3, item_pop=pop, n_users=split.n_users)
    ref = reference_fair_point(bucket, item_emb, user_emb, cfg, 3, torch.as_tensor(pop),
                               split.n_users)
    _assert_user_by_user(new, *ref)


@pytest.mark.parametrize("loss", ["fs-pair", "ubpr", "fs-point", "wmf", "relmf", "du"])
@pytest.mark.parametrize("case", ["no-training-rows", "no-local-epoch"])
def test_fair_losses_return_a_neutral_result_on_an_empty_bucket(split, loss, case):
    """A cohort (or DP sample) of users without training rows, or ``local_epochs=0``."""
    bucket, item_emb, user_emb, pop = _inputs(split, np.arange(3))
    epochs = 2
    if case == "no-training-rows":
        bucket.train = sp.csr_matrix(bucket.train.shape, dtype=bucket.train.dtype)
    else:
        epochs = 0
    cfg = LocalConfig(local_epochs=epochs, local_batch_size=4, mf_loss=loss, lr=0.05)
    new = fair_local_update(bucket, item_emb, np.zeros(split.n_items, np.float32), user_emb,
                            cfg, 1, item_pop=pop, n_users=split.n_users)
    assert new.user_emb.shape == user_emb.shape and new.delta.shape[1] == D
    assert len(new.row_user) == len(new.row_item) == len(new.delta) == len(new.bias_delta)
    if loss in ("fs-pair", "ubpr"):  # no pairs: no rows, nothing moved
        assert new.num_pairs == 0 and len(new.delta) == 0 and new.loss_sum == 0.0
        np.testing.assert_array_equal(new.user_emb, user_emb)
    elif case == "no-local-epoch":  # every (user, item) row, unchanged
        assert new.num_pairs == 0 and new.loss_sum == 0.0
        assert len(new.delta) == 3 * split.n_items and not new.delta.any()
        np.testing.assert_array_equal(new.user_emb, user_emb)
    else:  # point losses train on all-negative labels: finite, not a crash
        assert new.num_pairs == 3 * split.n_items * epochs and np.isfinite(new.delta).all()
