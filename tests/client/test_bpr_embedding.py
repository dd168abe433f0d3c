"""The vectorised bucket trainer equals per-user training and, in the limit, central training."""

import numpy as np
import pytest
import torch

from florec.client.trainers.bpr_embedding import LocalConfig, local_update
from florec.client.trainers.bucket import Bucket
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.protocol.fedavg_upload import node_payload
from florec.recdata.partition import partition_users
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic

D = 8


@pytest.fixture(scope="module")
def split():
    return make_split(generate_synthetic(n_users=30, n_items=40, seed=0), "loo", seed=0)


def global_tables(n_items, seed=0):
    init = MF(0, n_items, dim=D, seed=seed)
    return init.item_emb.detach().numpy(), init.item_bias.detach().numpy()


def bucket_update(split, users, cfg, server_round=1):
    bucket = Bucket.from_split(split, users)
    emb, bias = global_tables(split.n_items)
    user_emb = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    return bucket, local_update(bucket, emb, bias, user_emb, cfg, server_round)


def dense_mean(split, buckets, cfg):
    """FedAvg dense aggregate over several buckets (interaction weights)."""
    total, weight = 0.0, 0.0
    for users in buckets:
        bucket, res = bucket_update(split, users, cfg)
        deg = np.diff(bucket.train.indptr).astype(float)
        arrays, w = node_payload("dense", split.n_items, res.row_user, res.row_item, res.delta,
                                 res.bias_delta, deg)
        total, weight = total + arrays["item_emb"].astype(np.float64), weight + w
    return total / weight


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bucket_training_equals_training_users_one_by_one(split, optimizer):
    cfg = LocalConfig(local_epochs=2, local_batch_size=3, optimizer=optimizer, lr=0.05, reg=1e-3)
    users = np.arange(10)
    _, together = bucket_update(split, users, cfg)
    for j, u in enumerate(users):
        _, alone = bucket_update(split, np.array([u]), cfg)
        np.testing.assert_allclose(together.user_emb[j], alone.user_emb[0], atol=1e-5)
        mine = together.row_user == j
        np.testing.assert_array_equal(together.row_item[mine], alone.row_item)
        np.testing.assert_allclose(together.delta[mine], alone.delta, atol=1e-5)


def test_aggregate_does_not_depend_on_bucket_size(split):
    cfg = LocalConfig(local_epochs=1, local_batch_size=4, optimizer="adam", lr=0.05)
    results = [dense_mean(split, partition_users(split.n_users, users_per_node=size), cfg)
               for size in (1, 7, split.n_users)]
    for other in results[1:]:
        np.testing.assert_allclose(results[0], other, atol=1e-5)


def test_one_bucket_full_batch_step_equals_central_gradient_step(split):
    """One local full-batch SGD step per user, interaction-weighted dense average == one central
    full-batch SGD step on the mean BPR loss over the same triples."""
    lr = 0.5
    cfg = LocalConfig(local_epochs=1, local_batch_size=10_000, optimizer="sgd", lr=lr, reg=0.01)
    users = np.arange(split.n_users)
    bucket, res = bucket_update(split, users, cfg)
    fed = dense_mean(split, [users], cfg) + global_tables(split.n_items)[0]

    central = MF(split.n_users, split.n_items, dim=D, seed=0, reg=0.01)
    u, pos, neg = (torch.as_tensor(a) for a in res.triples)
    loss = central.loss(u, pos, neg)
    loss.backward()
    with torch.no_grad():
        central_item = central.item_emb - lr * central.item_emb.grad
    np.testing.assert_allclose(fed, central_item.numpy(), atol=1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_bucket_adam_equals_torch_adam_run_user_by_user(split, weight_decay):
    """Reference: each user alone, its embedding and item-row copies under torch.optim.Adam."""
    from florec.client.trainers.bpr_embedding import build_pairs, step_bounds
    from florec.models.mf import bpr_terms

    cfg = LocalConfig(local_epochs=2, local_batch_size=3, optimizer="adam", lr=0.05, reg=1e-3,
                      weight_decay=weight_decay)
    bucket, res = bucket_update(split, np.arange(8), cfg)
    emb, bias = global_tables(split.n_items)
    start = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    pairs = build_pairs(bucket, cfg, 1)
    for j in range(len(bucket.users)):
        items = res.row_item[res.row_user == j]
        p = torch.tensor(start[j], requires_grad=True)
        q = torch.tensor(emb[items], requires_grad=True)
        qb = torch.tensor(bias[items], requires_grad=True)
        opt = torch.optim.Adam([p, q, qb], lr=cfg.lr, weight_decay=weight_decay)
        mine = pairs["user"] == j
        row = {int(i): r for r, i in enumerate(items)}
        pos = torch.tensor([row[int(i)] for i in pairs["pos"][mine]])
        neg = torch.tensor([row[int(i)] for i in pairs["neg"][mine]])
        for _, s, e in step_bounds(pairs["step"][mine]):
            opt.zero_grad()
            bpr_terms(p.expand(e - s, -1), q[pos[s:e]], q[neg[s:e]], qb[pos[s:e]],
                      qb[neg[s:e]], cfg.reg).mean().backward()
            opt.step()
        np.testing.assert_allclose(res.user_emb[j], p.detach().numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(res.delta[res.row_user == j], q.detach().numpy() - emb[items],
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(res.bias_delta[res.row_user == j],
                                   qb.detach().numpy() - bias[items], rtol=0, atol=1e-6)


def test_private_embeddings_move_and_untouched_items_do_not(split):
    cfg = LocalConfig(local_epochs=1, local_batch_size=8, optimizer="adam", lr=0.05)
    bucket, res = bucket_update(split, np.arange(5), cfg)
    start = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    assert not np.allclose(res.user_emb, start)
    touched = set(res.row_item.tolist())
    seen = set(bucket.train.indices.tolist())
    assert seen <= touched
    assert res.num_pairs == bucket.train.nnz


@pytest.mark.parametrize("reg", [0.0, 0.01])
def test_closed_form_bpr_gradient_equals_autograd(reg):
    from florec.client.trainers.bpr_embedding import bpr_step_grads
    from florec.models.mf import bpr_terms

    gen = torch.Generator().manual_seed(0)
    P, L, Lb = torch.randn(4, D, generator=gen), torch.randn(9, D, generator=gen), \
        torch.randn(9, generator=gen)
    user, pos = torch.tensor([0, 0, 1, 2, 2, 2, 3]), torch.tensor([0, 1, 2, 3, 3, 4, 5])
    neg, weight = torch.tensor([6, 6, 7, 8, 0, 7, 8]), torch.rand(7, generator=gen)
    terms, grads = bpr_step_grads(P, L, Lb, user, pos, neg, weight, reg)
    leaves = [t.clone().requires_grad_(True) for t in (P, L, Lb)]
    ref = bpr_terms(leaves[0][user], leaves[1][pos], leaves[1][neg], leaves[2][pos],
                    leaves[2][neg], reg)
    (weight * ref).sum().backward()
    np.testing.assert_allclose(terms.numpy(), ref.detach().numpy(), rtol=0, atol=1e-6)
    for got, leaf in zip(grads, leaves, strict=True):
        np.testing.assert_allclose(got.numpy(), leaf.grad.numpy(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Popularity-aware losses (mf-loss != bpr)
# --------------------------------------------------------------------------------------------------


def fair_update(split, users, cfg, server_round=1):
    bucket = Bucket.from_split(split, users)
    emb, bias = global_tables(split.n_items)
    user_emb = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    pop = np.asarray(split.matrix("train").sum(0)).ravel().astype(np.float32)
    return bucket, local_update(bucket, emb, bias, user_emb, cfg, server_round,
                                item_pop=pop, n_users=split.n_users)


def test_local_config_carries_the_loss_knobs():
    from florec.recdata.runconfig import parse_run_config

    cfg = LocalConfig.from_run_config(parse_run_config(
        {"mf-loss": "fs-point", "ips-beta": 0.3, "weight-decay": 1e-3, "lr": 0.2}))
    assert (cfg.mf_loss, cfg.ips_beta, cfg.weight_decay, cfg.lr) == ("fs-point", 0.3, 1e-3, 0.2)
    assert LocalConfig().mf_loss == "bpr"


@pytest.mark.parametrize("loss", ["fs-point", "fs-pair", "ubpr", "du"])
def test_fair_bucket_training_equals_training_users_one_by_one(split, loss):
    cfg = LocalConfig(local_epochs=2, local_batch_size=7, optimizer="adam", lr=0.05,
                      mf_loss=loss, weight_decay=1e-3)
    users = np.arange(6)
    _, together = fair_update(split, users, cfg)
    assert np.all(together.bias_delta == 0)
    for j, u in enumerate(users):
        _, alone = fair_update(split, np.array([u]), cfg)
        np.testing.assert_allclose(together.user_emb[j], alone.user_emb[0], atol=1e-5)
        mine = together.row_user == j
        np.testing.assert_array_equal(together.row_item[mine], alone.row_item)
        np.testing.assert_allclose(together.delta[mine], alone.delta, atol=1e-5)


def test_fs_point_step_is_the_gradient_of_the_closed_form_weighted_loss(split):
    from florec.models import fair_losses as fl

    lr, wd = 0.1, 1e-2
    cfg = LocalConfig(local_epochs=1, local_batch_size=10_000, optimizer="sgd", lr=lr,
                      mf_loss="fs-point", weight_decay=wd)
    bucket, res = fair_update(split, np.arange(3), cfg)
    emb, _ = global_tables(split.n_items)
    P = torch.as_tensor(seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)).requires_grad_(True)
    Q = torch.as_tensor(emb).expand(3, -1, -1).clone().requires_grad_(True)
    pop = torch.as_tensor(np.asarray(split.matrix("train").sum(0)).ravel(), dtype=torch.float32)
    y = torch.as_tensor(bucket.train.toarray(), dtype=torch.float32)
    w = fl.fs_point_weights(y, pop.expand(3, -1), split.n_users)
    loss = fl.weighted_point_loss(torch.einsum("bd,bnd->bn", P, Q), y, w)
    gP, gQ = torch.autograd.grad(loss, (P, Q))
    with torch.no_grad():
        np.testing.assert_allclose(res.user_emb, (P - lr * (gP + wd * P)).numpy(), atol=1e-5)
        delta = (-lr * (gQ + wd * Q)).reshape(-1, D).numpy()
    np.testing.assert_allclose(res.delta, delta, atol=1e-5)
    assert res.num_pairs == 3 * split.n_items


def test_fs_pair_approx_negatives_are_unseen_and_follow_popularity(split):
    from florec.client.trainers.fair_embedding import pop_negatives

    bucket = Bucket.from_split(split, np.arange(split.n_users))
    pop = np.asarray(split.matrix("train").sum(0)).ravel().astype(float)
    users = np.repeat(np.arange(3), 4000)
    neg = pop_negatives(bucket, users, pop, seed=0, server_round=1)
    dense = bucket.train.toarray() > 0
    assert not dense[users, neg].any()
    w = pop * ~dense[0]
    freq = np.bincount(neg[users == 0], minlength=len(pop)) / 4000
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.03)


def test_a_fair_loss_without_popularity_is_an_error(split):
    bucket = Bucket.from_split(split, np.arange(2))
    emb, bias = global_tables(split.n_items)
    with pytest.raises(ValueError, match="item popularity"):
        local_update(bucket, emb, bias, seeded_rows(bucket.users, D, 0, 0.1, USER_SALT),
                     LocalConfig(mf_loss="fs-point"), 1)
