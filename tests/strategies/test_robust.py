"""Robust aggregation: each defense equals plain averaging on identical updates, and removes
planted outliers."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import node_payload
from florec.protocol.user_rows import user_rows_payload
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.robust import (
    RobustFedAvgRec,
    check_robust,
    krum_select,
    norm_bound,
    row_aggregate,
)

N, D = 12, 4


@pytest.fixture(autouse=True)
def _run_ids():
    from florec.sim.local_grid import LocalGrid

    LocalGrid({}, 1, handlers={})  # the run/task ids a Flower process would set (Message needs)


def reply(arrays, weight=0.0):
    content = RecordDict({"arrays": to_record(arrays),
                          "metrics": MetricRecord({"weight": weight, "num-users": 1.0,
                                                   "num-pairs": 1.0, "loss-sum": 0.5})})
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


def nodes_of_users(delta, bias, items, users_per_node, n_nodes, mode, per_user):
    """Replies of ``n_nodes`` nodes whose users all upload the same rows."""
    out = []
    for _ in range(n_nodes):
        row_user = np.repeat(np.arange(users_per_node), len(items))
        row_item = np.tile(items, users_per_node)
        d = np.tile(delta, (users_per_node, 1))
        b = np.tile(bias, users_per_node)
        w = np.full(users_per_node, 3.0)
        arrays, weight = (user_rows_payload(row_user, row_item, d, b, w) if per_user
                          else node_payload(mode, N, row_user, row_item, d, b, w))
        out.append(reply(arrays, weight))
    return out


def aggregate(strategy, replies):
    rng = np.random.default_rng(1)
    strategy.current = {"item_emb": rng.normal(size=(N, D)).astype(np.float32),
                        "item_bias": rng.normal(size=N).astype(np.float32)}
    arrays, metrics = strategy.aggregate_train(1, replies)
    return from_record(arrays), metrics


# every (defense, aggregation) pair check_robust accepts
PAIRS = [("norm-bound", "sparse"), ("norm-bound", "dense"), ("norm-bound", "sum"),
         ("median", "sparse"), ("trimmed-mean", "sparse"), ("median", "sum"),
         ("trimmed-mean", "sum"), ("krum", "sparse"),
         ("krum", "dense"), ("multi-krum", "sparse"), ("multi-krum", "dense")]


@pytest.mark.parametrize(("defense", "mode"), PAIRS)
def test_each_defense_equals_plain_averaging_when_all_updates_are_identical(defense, mode):
    rng = np.random.default_rng(0)
    items = np.array([1, 4, 7])
    delta, bias = rng.normal(0, 0.1, (3, D)), rng.normal(0, 0.1, 3)
    plain, _ = aggregate(FedAvgRec(mode), nodes_of_users(delta, bias, items, 3, 5, mode, False))
    per_user = defense in ("norm-bound", "median", "trimmed-mean")
    robust = RobustFedAvgRec(defense, norm=100.0, trim=0.2, num_malicious=1, mode=mode)
    got, metrics = aggregate(robust, nodes_of_users(delta, bias, items, 3, 5, mode, per_user))
    for key in plain:
        np.testing.assert_allclose(got[key], plain[key], rtol=1e-6, atol=1e-7)
    assert metrics["num-replies"] == 5  # every usable reply, kept by Krum or not
    if defense in ("krum", "multi-krum"):
        assert metrics["krum-kept"] == (1 if defense == "krum" else 4)


def test_trimmed_mean_and_median_remove_a_planted_outlier():
    rng = np.random.default_rng(0)
    benign = rng.normal(0.0, 0.01, (19, D))
    emb = np.vstack([benign, np.full((1, D), 100.0)])
    items = np.zeros(20, dtype=np.int64)
    bias = np.concatenate([np.zeros(19), [100.0]])
    for rule in ("trimmed-mean", "median"):
        touched, e, b = row_aggregate(items, emb, bias, rule, trim=0.1)
        assert touched.tolist() == [0]
        assert np.abs(e[0] - benign.mean(0)).max() < 0.02 and abs(b[0]) < 0.02
    assert emb.mean(0).min() > 4.0  # the plain mean is dragged far away


def test_norm_bound_clips_each_users_whole_update():
    users = np.array([0, 0, 1])
    emb = np.array([[3.0, 0.0], [0.0, 0.0], [0.3, 0.4]])
    bias = np.array([0.0, 4.0, 0.0])
    e, b = norm_bound(users, emb, bias, 1.0)  # user 0: norm 5 -> 1; user 1: norm 0.5 kept
    # float32 rows (what a node uploads), a clipped user a few ulps inside the bound
    np.testing.assert_allclose(e, [[0.6, 0.0], [0.0, 0.0], [0.3, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(b, [0.0, 0.8, 0.0], rtol=1e-6)


def test_krum_drops_the_node_far_from_the_others():
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 0.1, 20) for _ in range(6)] + [np.full(20, 5.0)]
    assert 6 not in krum_select(vectors, num_malicious=1, num_select=5)
    assert len(krum_select(vectors, num_malicious=1, num_select=1)) == 1


def _median_over_a_poisoned_user(mode: str):
    """Row 2 changed by 0.1 by four benign users and by 50 by a fifth; the median's result."""
    items = np.array([2])
    benign = [(np.full((1, D), 0.1), np.array([0.1]))] * 4
    rows = [user_rows_payload(np.zeros(1, np.int64), items, d, b, np.ones(1))
            for d, b in benign + [(np.full((1, D), 50.0), np.array([50.0]))]]
    strategy = RobustFedAvgRec("median", mode=mode)
    got, _ = aggregate(strategy, [reply(a, w) for a, w in rows])
    return got, strategy


def test_a_sparse_median_ignores_a_poisoned_user_among_benign_ones():
    got, strategy = _median_over_a_poisoned_user("sparse")
    before_emb = strategy.current["item_emb"]
    np.testing.assert_allclose(got["item_emb"][2] - before_emb[2], 0.1, atol=1e-6)


def test_a_sum_median_keeps_the_sums_scale_and_ignores_a_poisoned_user():
    got, strategy = _median_over_a_poisoned_user("sum")
    # five users touched row 2: the step is 5 x their median change, not the sum's 50.4
    np.testing.assert_allclose(got["item_emb"][2] - strategy.current["item_emb"][2], 0.5,
                               atol=1e-5)
    np.testing.assert_allclose(got["item_emb"][0], strategy.current["item_emb"][0])


def test_defense_configurations_that_cannot_run_fail_in_one_line():
    with pytest.raises(ConfigError, match="set aggregation='sparse'"):
        check_robust(parse_run_config({"defense": "median", "aggregation": "dense"}))
    with pytest.raises(ConfigError, match="averages the nodes it keeps"):
        check_robust(parse_run_config({"defense": "krum", "aggregation": "sum"}))
    with pytest.raises(ConfigError, match="model 'mf'"):
        check_robust(parse_run_config({"defense": "krum", "model": "cotrec"}))
    with pytest.raises(ConfigError, match="cannot take a median of a masked sum"):
        check_robust(parse_run_config({"attack": "fedrecattack", "attack-fraction": 0.01,
                                       "attack-targets": "unpopular:5", "secagg": True}))
    check_robust(parse_run_config({"defense": "krum", "model": "sasrec"}))  # dense uploads
    with pytest.raises(ConfigError, match="set attack-targets"):
        check_robust(parse_run_config({"attack": "bandwagon", "attack-fraction": 0.01,
                                       "model": "sasrec"}))
    with pytest.raises(ConfigError, match="fedcia-comm='dense'"):
        check_robust(parse_run_config({"algorithm": "fedcia", "defense": "median",
                                       "fedcia-comm": "factored"}))
    check_robust(parse_run_config({"defense": "trimmed-mean", "aggregation": "sparse"}))


def fedcia_reply(gram, weight):
    content = RecordDict({"arrays": to_record({"gram": gram.astype(np.float32)}),
                          "metrics": MetricRecord({"weight": weight, "train-loss": 0.1,
                                                   "clients": 1})})
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


@pytest.mark.parametrize("defense", ["norm-bound", "median", "trimmed-mean"])
def test_a_robust_fedcia_mean_equals_fedcia_on_identical_similarities(defense,
                                                                     downlink_similarity):
    from florec.strategies.fedcia import FedCIA
    from florec.strategies.robust import RobustFedCIA

    rng = np.random.default_rng(0)
    e = rng.normal(size=(N, 3))
    sim = e @ e.T
    norm = 2 * np.linalg.norm(sim)  # the norm bound clips nothing here
    plain, robust = FedCIA(N), RobustFedCIA(defense, norm=norm, trim=0.2, n_items=N)
    plain.aggregate_train(1, [fedcia_reply(sim * w, w) for w in (1.0, 2.0, 3.0, 1.0, 2.0)])
    robust.aggregate_train(1, [fedcia_reply(sim * w, w) for w in (1.0, 2.0, 3.0, 1.0, 2.0)])
    np.testing.assert_allclose(downlink_similarity(robust.downlink),
                               downlink_similarity(plain.downlink), atol=1e-5)


def test_a_fedcia_norm_bound_clips_each_node_mean_before_the_weighted_mean(downlink_similarity):
    from florec.strategies.robust import RobustFedCIA

    rng = np.random.default_rng(0)
    benign = np.eye(N) + rng.normal(0, 0.01, (N, N))
    benign = (benign + benign.T) / 2
    poisoned = np.full((N, N), 50.0)
    bound = float(np.linalg.norm(benign)) * 1.01
    robust = RobustFedCIA("norm-bound", norm=bound, n_items=N)
    _, metrics = robust.aggregate_train(1, [fedcia_reply(benign * 2.0, 2.0),
                                            fedcia_reply(poisoned * 3.0, 3.0)])
    clipped = poisoned * bound / np.linalg.norm(poisoned)
    expected = (2.0 * benign + 3.0 * clipped) / 5.0
    np.testing.assert_allclose(downlink_similarity(robust.downlink), expected, atol=1e-4)
    assert metrics["clipped-replies"] == 1 and metrics["num-replies"] == 2
    assert metrics["upload-norm-max"] == pytest.approx(np.linalg.norm(poisoned), rel=1e-5)


def test_the_median_rule_bounds_each_node_mean_by_the_rounds_median_norm(downlink_similarity):
    from florec.strategies.robust import RobustFedCIA

    rng = np.random.default_rng(1)
    benign = [np.eye(N) * scale for scale in (1.0, 2.0, 3.0)]
    poisoned = np.abs(rng.normal(0, 50.0, (N, N)))
    poisoned += poisoned.T
    robust = RobustFedCIA("norm-bound", norm=1.0, norm_rule="median", n_items=N)
    _, metrics = robust.aggregate_train(1, [fedcia_reply(g, 1.0) for g in benign + [poisoned]])
    median = float(np.median([np.linalg.norm(g) for g in benign + [poisoned]]))  # 2.5 sqrt(N)
    clipped = [g * min(1.0, median / np.linalg.norm(g)) for g in benign + [poisoned]]
    np.testing.assert_allclose(downlink_similarity(robust.downlink), sum(clipped) / 4, atol=1e-3)
    assert metrics["norm-bound"] == pytest.approx(median, rel=1e-5)
    assert metrics["clipped-replies"] == 2


def test_the_median_norm_rule_is_refused_outside_fedcia():
    with pytest.raises(ConfigError, match="defense-norm-rule='median' is implemented for FedCIA"):
        check_robust(parse_run_config({"defense": "norm-bound", "defense-norm-rule": "median"}))


def test_a_fedcia_median_ignores_one_poisoned_similarity(downlink_similarity):
    from florec.strategies.robust import RobustFedCIA

    rng = np.random.default_rng(0)
    benign = [rng.normal(0, 0.01, (N, N)) + np.eye(N) for _ in range(4)]
    poisoned = np.full((N, N), 50.0)
    robust = RobustFedCIA("median", n_items=N)
    robust.aggregate_train(1, [fedcia_reply(g, 1.0) for g in benign + [poisoned]])
    assert np.abs(downlink_similarity(robust.downlink) - np.eye(N)).max() < 0.05


@pytest.mark.parametrize(("defense", "per_user"), [("multi-krum", False), ("median", True)])
def test_a_reply_with_float_items_is_dropped_before_the_defense(defense, per_user):
    rng = np.random.default_rng(0)
    items = np.array([1, 4, 7])
    delta, bias = rng.normal(0, 0.1, (3, D)), rng.normal(0, 0.1, 3)
    good = nodes_of_users(delta, bias, items, 3, 4, "sparse", per_user)
    hostile = {k: v.astype(np.float64) if k in ("items", "users") else v
               for k, v in from_record(good[0].content["arrays"]).items()}
    robust = RobustFedAvgRec(defense, trim=0.2, num_malicious=1, mode="sparse")
    alone = RobustFedAvgRec(defense, trim=0.2, num_malicious=1, mode="sparse")
    got, metrics = aggregate(robust, [*good[:2], reply(hostile), *good[2:]])
    want, want_metrics = aggregate(alone, good)
    assert len(robust.dropped) == 1 and not alone.dropped
    assert metrics["num-replies"] == want_metrics["num-replies"]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_a_krum_round_of_five_nodes_passes_the_default_min_fit_fraction():
    from florec.server.federation import prepare_federation
    from florec.server.rounds import train_round
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config({"dataset": "synthetic", "synthetic-users": 40,
                            "synthetic-items": 60, "synthetic-interactions": 12, "dim": 8,
                            "num-nodes": 5, "num-rounds": 1, "defense": "krum",
                            "defense-malicious": 1})
    assert cfg.min_fit_fraction == 0.5  # the default: Krum's one kept node is below it
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    fed = prepare_federation(grid, cfg)
    before = from_record(fed.arrays)["item_emb"]
    new, row = train_round(grid, fed.strategy, 1, fed.arrays, cfg.round_timeout_s)
    assert row["train"]["num-replies"] == 5 and row["train"]["krum-kept"] == 1
    assert not np.array_equal(from_record(new)["item_emb"], before)  # the update was applied


def test_krum_decodes_each_reply_once(monkeypatch):
    import florec.strategies.payload as payload

    calls = []
    decode = payload.from_record
    monkeypatch.setattr(payload, "from_record", lambda rec: calls.append(1) or decode(rec))
    rng = np.random.default_rng(0)
    items = np.array([1, 4, 7])
    replies = nodes_of_users(rng.normal(0, 0.1, (3, D)), rng.normal(0, 0.1, 3), items, 3, 5,
                             "sparse", False)
    robust = RobustFedAvgRec("multi-krum", num_malicious=1, mode="sparse")
    _, metrics = aggregate(robust, replies)
    assert metrics["krum-kept"] == 4 and len(calls) == 5
