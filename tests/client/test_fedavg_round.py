"""A FedAvg-MF round: sum aggregation as a central step, user optimizer state, lr schedules."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from florec.client import fedavg_node, node_store
from florec.client.trainers.bpr_embedding import LocalConfig, local_update, scheduled_lr
from florec.client.trainers.bucket import Bucket
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT, bpr_terms
from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import node_payload
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic
from florec.strategies.fedavg import FedAvgRec

D, LR, REG = 8, 0.3, 1e-3


@pytest.fixture(scope="module")
def split():
    return make_split(generate_synthetic(n_users=30, n_items=40, seed=0), "loo", seed=0)


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def as_reply(content):
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


def test_one_sum_round_of_sgd_equals_one_central_step_on_the_stale_table(split):
    init = MF(0, split.n_items, dim=D, seed=0)
    emb, bias = init.item_emb.detach().numpy(), init.item_bias.detach().numpy()
    cfg = LocalConfig(local_epochs=1, local_batch_size=10_000, optimizer="sgd", lr=LR, reg=REG)
    strategy = FedAvgRec("sum")
    strategy.current = {"item_emb": emb, "item_bias": bias}
    replies, triples, new_users = [], [], {}
    for users in (np.arange(0, 13), np.arange(13, 30)):
        bucket = Bucket.from_split(split, users)
        p0 = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
        res = local_update(bucket, emb, bias, p0, cfg, server_round=1)
        payload, _ = node_payload("sparse", split.n_items, res.row_user, res.row_item, res.delta,
                                  res.bias_delta, np.ones(len(users)))
        replies.append(as_reply(RecordDict({"arrays": to_record(payload)})))
        triples.append(res.triples)
        new_users.update(zip(bucket.users.tolist(), res.user_emb, strict=True))
    got = from_record(strategy.aggregate_train(1, replies)[0])
    # central: one full-batch SGD step of sum_u mean_{(u,i,j)} bpr on the round's table
    users, pos, neg = (np.concatenate(t) for t in zip(*triples, strict=True))
    all_users = np.arange(split.n_users)
    P = torch.tensor(seeded_rows(all_users, D, 0, 0.1, USER_SALT), requires_grad=True)
    V = torch.tensor(emb, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    u, i, j = (torch.as_tensor(a) for a in (users, pos, neg))
    terms = bpr_terms(P[u], V[i], V[j], b[i], b[j], REG)
    per_user = torch.bincount(u, minlength=split.n_users).clamp(min=1).to(terms.dtype)
    (terms / per_user[u]).sum().backward()
    np.testing.assert_allclose(got["item_emb"], (V - LR * V.grad).detach().numpy(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["item_bias"], (b - LR * b.grad).detach().numpy(),
                               rtol=1e-4, atol=1e-6)
    want_p = (P - LR * P.grad).detach().numpy()
    for user, p in new_users.items():
        np.testing.assert_allclose(p, want_p[user], rtol=1e-4, atol=1e-6)


def node_round(ctx, cfg, bucket, rnd, tables):
    msg = Message(RecordDict({"arrays": to_record(tables),
                              "config": ConfigRecord({"server-round": rnd})}),
                  dst_node_id=1, message_type="train")
    return fedavg_node.train(msg, ctx, cfg, bucket, 0, "cpu")


def node_context():
    return Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                   node_config={"partition-id": 0})


@pytest.mark.parametrize("keep", [True, False])
def test_user_optimizer_state_persists_across_rounds_only_when_kept(split, keep, tmp_path):
    cfg = parse_run_config({"dataset": "synthetic", "dim": D, "keep-user-opt-state": keep,
                            "local-batch-size": 4})
    bucket = Bucket.from_split(split, np.arange(10))
    init = MF(0, split.n_items, dim=D, seed=0)
    tables = {"item_emb": init.item_emb.detach().numpy(),
              "item_bias": init.item_bias.detach().numpy()}
    ctx = node_context()
    node_round(ctx, cfg, bucket, 1, tables)
    first = node_store.open_store(ctx, cfg.store_spill_mb).get(fedavg_node.PRIVATE_KEY)
    node_round(ctx, cfg, bucket, 2, tables)
    second = node_store.open_store(ctx, cfg.store_spill_mb).get(fedavg_node.PRIVATE_KEY)
    steps_per_round = -(-np.diff(bucket.train.indptr) // 4)
    if not keep:
        assert set(second) == {"user_emb"}
        return
    np.testing.assert_array_equal(first["opt-steps"], steps_per_round)
    np.testing.assert_array_equal(second["opt-steps"], 2 * steps_per_round)
    assert np.abs(second["opt-m0"]).sum() > 0 and second["opt-v0"].shape == (10, D)
    # a checkpoint snapshot of the node store brings the state back on resume
    path = tmp_path / "node.npz"
    node_store.open_store(ctx, cfg.store_spill_mb).snapshot(path)
    node_store.clear_cache()
    fresh = node_context()
    node_store.open_store(fresh, cfg.store_spill_mb).restore(path)
    back = node_store.open_store(fresh, cfg.store_spill_mb).get(fedavg_node.PRIVATE_KEY)
    for key, value in second.items():
        np.testing.assert_array_equal(back[key], value)


def test_kept_state_continues_the_users_adam_instead_of_restarting_it(split):
    bucket = Bucket.from_split(split, np.arange(5))
    init = MF(0, split.n_items, dim=D, seed=0)
    emb, bias = init.item_emb.detach().numpy(), init.item_bias.detach().numpy()
    p0 = seeded_rows(bucket.users, D, 0, 0.1, USER_SALT)
    cfg = LocalConfig(local_batch_size=4, lr=0.05)
    r1 = local_update(bucket, emb, bias, p0, cfg, 1)
    kept = local_update(bucket, emb, bias, r1.user_emb, cfg, 2, user_opt_state=r1.user_opt_state)
    reset = local_update(bucket, emb, bias, r1.user_emb, cfg, 2)
    assert not np.allclose(kept.user_emb, reset.user_emb)
    np.testing.assert_array_equal(kept.user_opt_state["steps"], 2 * r1.user_opt_state["steps"])
    np.testing.assert_array_equal(reset.user_opt_state["steps"], r1.user_opt_state["steps"])


@pytest.mark.parametrize(("schedule", "rnd", "want"), [
    ("constant", 7, 0.1), ("cosine", 1, 0.1), ("cosine", 6, 0.055), ("step", 4, 0.1),
    ("step", 5, 0.05), ("step", 9, 0.025)])
def test_lr_schedule_gives_each_rounds_step_size(schedule, rnd, want):
    cfg = parse_run_config({"lr": 0.1, "lr-schedule": schedule, "num-rounds": 10,
                            "lr-min": 0.01, "lr-step-rounds": 4, "lr-gamma": 0.5})
    assert scheduled_lr(cfg, rnd) == pytest.approx(want)
    assert LocalConfig.from_run_config(cfg, rnd).lr == pytest.approx(want)
