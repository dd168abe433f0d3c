"""Poisoning attacks: malicious users by seed, update rules, and whole federated runs."""

import json

import numpy as np
import pytest

from florec.client import node_store
from florec.client.attack_rules import attack_rows, clip_rows, promotion_step
from florec.client.attacks import apply_attack, knowledge_from_split, malicious_users
from florec.client.trainers.bpr_embedding import LocalConfig, local_update
from florec.client.trainers.bucket import Bucket
from florec.models.base import seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.registry import check_algorithm

ATTACKS = ("random", "bandwagon", "pipattack", "fedrecattack", "a-ra", "a-hum", "fedattack")


@pytest.fixture(scope="module")
def split():
    return make_split(generate_synthetic(n_users=60, n_items=80, seed=0), "loo", seed=0)


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def cfg_of(**kw):
    return parse_run_config({k.replace("_", "-"): v for k, v in kw.items()})


def test_malicious_users_are_drawn_by_seed_and_nested_in_the_fraction():
    a = malicious_users(cfg_of(attack="a-ra", attack_fraction=0.05, seed=3), 1000)
    assert len(a) == 50 and np.array_equal(a, np.unique(a))
    assert np.array_equal(a, malicious_users(cfg_of(attack="a-ra", attack_fraction=0.05,
                                                    seed=3), 1000))
    assert not np.array_equal(a, malicious_users(cfg_of(attack="a-ra", attack_fraction=0.05,
                                                        seed=4), 1000))
    small = malicious_users(cfg_of(attack="a-ra", attack_fraction=0.01, seed=3), 1000)
    assert len(small) == 10 and np.isin(small, a).all()
    assert len(malicious_users(cfg_of(attack="none", attack_fraction=0.05), 1000)) == 0


def test_the_node_hosting_a_malicious_user_logs_it(split, caplog):
    cfg = cfg_of(attack="fedrecattack", attack_fraction=0.1, attack_targets="unpopular:2",
                 dim=8)
    know = knowledge_from_split(cfg, split)
    bucket = Bucket.from_split(split, np.arange(split.n_users))
    init = MF(0, split.n_items, dim=8, seed=0)
    glob = {"item_emb": init.item_emb.detach().numpy(), "item_bias": init.item_bias.detach()
            .numpy()}
    p = seeded_rows(bucket.users, 8, 0, 0.1, USER_SALT)
    res = local_update(bucket, glob["item_emb"], glob["item_bias"], p, LocalConfig(), 1)
    with caplog.at_level("INFO"):
        out = apply_attack(cfg, know, bucket, res, glob, 1, pid=7)
    assert f"partition 7 hosts malicious users {know.malicious.tolist()}" in caplog.text
    bad = np.isin(bucket.users[out.row_user], know.malicious)
    # attackers upload exactly the target rows; benign rows are untouched
    assert set(out.row_item[bad].tolist()) == set(know.targets.tolist())
    good = ~np.isin(bucket.users[res.row_user], know.malicious)
    np.testing.assert_array_equal(out.delta[~bad], res.delta[good])


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_uploads_finite_rows_within_its_norm_bound(split, attack):
    cfg = cfg_of(attack=attack, attack_fraction=0.1, attack_targets="unpopular:3", dim=8,
                 attack_norm=0.5, attack_fillers=5, attack_users=16)
    know = knowledge_from_split(cfg, split)
    init = MF(0, split.n_items, dim=8, seed=0)
    v, b = init.item_emb.detach().numpy(), init.item_bias.detach().numpy()
    users = know.malicious[:2]
    rows = attack_rows(cfg, know, users, seeded_rows(users, 8, 0, 0.1, USER_SALT), v, b, 1,
                       LocalConfig())
    norms = np.sqrt((rows.delta.astype(float) ** 2).sum(1) + rows.bias_delta ** 2)
    assert len(rows.row_item) > 0 and np.isfinite(rows.delta).all()
    assert norms.max() <= 0.5 + 1e-6 and set(rows.row_user.tolist()) == {0, 1}


def test_clip_rows_scales_only_rows_above_the_bound():
    from florec.client.attack_rules import AttackRows

    rows = AttackRows(np.zeros(2, int), np.arange(2), np.array([[3.0, 0.0], [0.1, 0.0]]),
                      np.array([4.0, 0.0]))
    out = clip_rows(rows, 1.0)
    np.testing.assert_allclose(out.delta, [[0.6, 0.0], [0.1, 0.0]])
    np.testing.assert_allclose(out.bias_delta, [0.8, 0.0])


def test_promotion_step_lifts_the_targets_for_the_approximated_users():
    rng = np.random.default_rng(0)
    v, b = rng.normal(0, 0.3, (50, 8)), np.zeros(50)
    users, targets = rng.normal(0, 0.3, (20, 8)), np.array([3, 9])
    d, db = promotion_step(v, b, users, targets, k=5, lr=0.5, steps=10)
    before = users @ v.T
    v2, b2 = v.copy(), b.copy()
    v2[targets] += d
    b2[targets] += db
    after = users @ v2.T + b2

    def rank(s):
        return (s[:, None, :] > s[:, targets][:, :, None]).sum(-1)

    assert rank(after).mean() < rank(before).mean() / 4
    assert np.array_equal(after[:, [0, 1, 2]], before[:, [0, 1, 2]])  # other rows untouched


def test_targeted_attack_without_targets_and_unsupported_methods_fail_in_one_line(split):
    with pytest.raises(ConfigError, match="set attack-targets"):
        knowledge_from_split(cfg_of(attack="a-ra", attack_fraction=0.1), split)
    with pytest.raises(ConfigError, match="FedCIA takes attack 'pipattack'"):
        check_algorithm(cfg_of(algorithm="fedcia", attack="a-ra", attack_fraction=0.1))
    with pytest.raises(ConfigError, match="sequential models take attack one of"):
        check_algorithm(cfg_of(model="sasrec", attack="a-ra", attack_fraction=0.1,
                               attack_targets="unpopular:2"))


SMALL = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 80,
         "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
         "aggregation": "sparse"}


def run(tmp_path, **extra):
    cfg = parse_run_config(SMALL | extra)
    result = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    return result, rows


def node_reply(split, cfg):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from florec.client import fedavg_node
    from florec.client.attacks import store_published
    from florec.protocol.codec import from_record, to_record
    from florec.protocol.public_knowledge import node_report

    init = MF(0, split.n_items, dim=cfg.dim, seed=0)
    msg = Message(RecordDict({"arrays": to_record(init.shared_state()),
                              "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={})
    bucket = Bucket.from_split(split, np.arange(split.n_users))
    store_published(ctx, node_report(cfg.seed, cfg.attack_public, bucket.users, bucket.train))
    out = fedavg_node.train(msg, ctx, cfg, bucket, 0, "cpu")
    node_store.clear_cache()
    return from_record(out.array_records["arrays"])


def test_fraction_zero_uploads_exactly_what_the_clean_node_uploads(split):
    base = {"dim": 8, "aggregation": "sparse", "attack-targets": "unpopular:3"}
    clean = node_reply(split, parse_run_config(base))
    zero = node_reply(split, parse_run_config(base | {"attack": "a-hum", "attack-fraction": 0}))
    bad = node_reply(split, parse_run_config(base | {"attack": "a-hum", "attack-fraction": 0.1}))
    assert clean.keys() == zero.keys()
    for key in clean:
        np.testing.assert_array_equal(clean[key], zero[key])
    assert not np.array_equal(clean["item_emb"], bad["item_emb"])


def test_fraction_zero_run_matches_the_clean_run_and_an_attack_lifts_exposure(tmp_path):
    clean, clean_rows = run(tmp_path / "clean", **{"attack-targets": "unpopular:3"})
    zero, zero_rows = run(tmp_path / "zero", **{"attack": "fedrecattack", "attack-fraction": 0.0,
                                               "attack-targets": "unpopular:3"})
    # pooled means agree to the last bits (replies are pooled in arrival order)
    assert zero["metrics"] == pytest.approx(clean["metrics"], rel=1e-12, abs=1e-15)
    for a, b in zip(zero_rows, clean_rows, strict=True):
        assert a["valid"] == pytest.approx(b["valid"], rel=1e-12, abs=1e-15)
    attacked, _ = run(tmp_path / "attacked", **{"attack": "fedrecattack", "attack-fraction": 0.1,
                                                "attack-targets": "unpopular:3",
                                                "attack-lr": 1.0})
    assert attacked["metrics"]["er@10"] > clean["metrics"]["er@10"] + 0.2
    assert attacked["metrics"]["num-users"] == clean["metrics"]["num-users"] - 6  # 10% left out


def test_a_malicious_fedcia_client_uploads_targets_that_look_popular(split):
    from florec.client.attacks import poison_similarity

    cfg = cfg_of(algorithm="fedcia", attack="pipattack", attack_fraction=0.25, num_nodes=4,
                 attack_targets="unpopular:2")
    know = knowledge_from_split(cfg, split)
    assert len(know.malicious_clients) == 1
    bad = int(know.malicious_clients[0])
    emb = np.random.default_rng(0).normal(size=(split.n_items, 4))
    out = poison_similarity(cfg, know, bad, emb)
    top = np.argsort(-know.popularity, kind="stable")[:split.n_items // 20]
    np.testing.assert_allclose(out[know.targets], np.tile(emb[top].mean(0), (2, 1)))
    assert poison_similarity(cfg, know, (bad + 1) % 4, emb) is emb


def test_fedcia_poisoning_lifts_exposure_and_the_median_holds_it_back(tmp_path):
    fedcia = {"algorithm": "fedcia", "attack-targets": "unpopular:3", "num-rounds": 2,
              "num-nodes": 8, "aggregation": "dense"}
    clean, _ = run(tmp_path / "clean", **fedcia)
    attack = fedcia | {"attack": "pipattack", "attack-fraction": 0.25, "attack-lr": 30.0}
    attacked, _ = run(tmp_path / "attacked", **attack)
    defended, _ = run(tmp_path / "median", **attack | {"defense": "median"})
    assert attacked["metrics"]["er@10"] > clean["metrics"]["er@10"] + 0.2
    assert defended["metrics"]["er@10"] < attacked["metrics"]["er@10"] - 0.2
