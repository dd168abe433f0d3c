"""Generic FedAvg over all shared arrays: exact weighted means, streaming, bad replies."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from florec.protocol.codec import from_record, to_record
from florec.recdata.runconfig import parse_run_config
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedavg_params import FedAvgParams, build_sequential_strategy


def Grid(n):  # noqa: N802 - an in-process grid of n nodes (it also sets Flower's task identity)
    return LocalGrid({}, n, handlers={})


@pytest.fixture(autouse=True)
def _task_identity():
    Grid(1)


def state(seed):
    g = np.random.default_rng(seed)
    return {"a": g.normal(size=(3, 2)).astype(np.float32), "b": g.normal(size=4).astype(np.float32)}


def reply(arrays, weight, loss=1.0):
    content = RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(
        {"num-positions": weight, "loss-sum": loss * weight, "num-users": 2})})
    msg = Message(content, dst_node_id=1, message_type="train")
    return Message(content, reply_to=msg)


def strategy_with(init):
    s = FedAvgParams()
    s.start_round()
    list(s.configure_train(1, to_record(init), ConfigRecord(), Grid(3)))
    return s


def test_the_new_state_is_the_position_weighted_mean():
    s = strategy_with(state(0))
    parts = [(state(1), 3.0), (state(2), 1.0), (state(3), 0.0)]
    new, metrics = s.aggregate_train(1, (reply(a, w) for a, w in parts))
    got = from_record(new)
    for k in ("a", "b"):
        want = (3 * parts[0][0][k].astype(np.float64) + parts[1][0][k]) / 4
        np.testing.assert_allclose(got[k], want, rtol=1e-6)
        assert got[k].dtype == np.float32
    assert metrics["num-replies"] == 3 and metrics["num-positions"] == 4
    assert metrics["train-loss"] == pytest.approx(1.0)


def counted_reply(arrays, weight, counts):
    msg = reply(arrays, weight)
    msg.content["item-counts"] = to_record({"counts": np.asarray(counts, np.float32)})
    return msg


def table_state(seed):
    g = np.random.default_rng(seed)
    return {"embedding.item.weight": g.normal(size=(4, 2)).astype(np.float32),
            "b": g.normal(size=3).astype(np.float32)}


def test_item_weighted_rows_are_count_weighted_and_unheld_rows_position_weighted():
    s = FedAvgParams(item_weighted=True)
    s.start_round()
    list(s.configure_train(1, to_record(table_state(0)), ConfigRecord(), Grid(2)))
    a, b = table_state(1), table_state(2)
    counts_a, counts_b = [0, 3, 0, 0], [0, 1, 2, 0]
    new, _ = s.aggregate_train(1, iter([counted_reply(a, 2.0, counts_a),
                                        counted_reply(b, 6.0, counts_b)]))
    got, key = from_record(new), "embedding.item.weight"
    ea, eb = a[key].astype(np.float64), b[key].astype(np.float64)
    np.testing.assert_allclose(got[key][1], (3 * ea[1] + eb[1]) / 4, rtol=1e-6)
    np.testing.assert_allclose(got[key][2], eb[2], rtol=1e-6)  # only b holds item 2
    for row in (0, 3):  # padding and an item no node holds: the position-weighted mean
        np.testing.assert_allclose(got[key][row], (2 * ea[row] + 6 * eb[row]) / 8, rtol=1e-6)
    np.testing.assert_allclose(got["b"], (2 * a["b"].astype(np.float64) + 6 * b["b"]) / 8,
                               rtol=1e-6)


def test_item_weighted_drops_replies_without_valid_counts():
    s = FedAvgParams(item_weighted=True)
    s.start_round()
    list(s.configure_train(1, to_record(table_state(0)), ConfigRecord(), Grid(2)))
    bad = [reply(table_state(1), 1.0), counted_reply(table_state(1), 1.0, [0, 1, 2]),
           counted_reply(table_state(1), 1.0, [0, -1, 0, 0]),
           counted_reply(table_state(1), 1.0, [0, np.nan, 0, 0])]
    good = counted_reply(table_state(3), 1.0, [0, 1, 1, 1])
    new, metrics = s.aggregate_train(1, iter([*bad, good]))
    assert metrics["num-replies"] == 1 and len(s.dropped) == 4
    np.testing.assert_allclose(from_record(new)["embedding.item.weight"],
                               table_state(3)["embedding.item.weight"], rtol=1e-6)


def test_configure_train_sends_every_array_to_every_sampled_node():
    s = FedAvgParams()
    msgs = list(s.configure_train(2, to_record(state(0)), ConfigRecord(), Grid(3)))
    assert len(msgs) == 3 and s.bytes_down >= 3 * (6 + 4) * 4 and s.bytes_down % 3 == 0
    assert set(from_record(msgs[0].content.array_records["arrays"])) == {"a", "b"}
    assert msgs[0].content.config_records["config"]["server-round"] == 2


def test_bad_replies_are_dropped_and_the_rest_aggregated():
    s = strategy_with(state(0))
    wrong_shape = state(1) | {"a": np.zeros((2, 2), np.float32)}
    extra = state(1) | {"c": np.zeros(1, np.float32)}
    nan = state(1) | {"b": np.full(4, np.nan, np.float32)}
    err = Message(Error(code=0, reason="boom"),
                  reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))
    good = reply(state(5), 2.0)
    new, metrics = s.aggregate_train(1, iter([reply(wrong_shape, 1.0), reply(extra, 1.0),
                                              reply(nan, 1.0), reply(state(6), -1.0), err, good]))
    assert metrics["num-replies"] == 1 and len(s.dropped) == 5
    np.testing.assert_allclose(from_record(new)["a"], state(5)["a"], rtol=1e-6)


def test_no_usable_reply_leaves_the_state_to_the_server():
    s = strategy_with(state(0))
    assert s.aggregate_train(1, iter([reply(state(1), 0.0)])) == (None, None)


def test_replies_are_folded_one_at_a_time_and_never_kept():
    import gc
    import weakref

    s = strategy_with({"a": np.zeros((20, 5), np.float32)})
    refs, alive = [], []

    def stream():
        for i in range(10):
            gc.collect()
            alive.append(sum(r() is not None for r in refs))
            msg = reply({"a": np.full((20, 5), i, np.float32)}, 1.0)
            refs.append(weakref.ref(msg))
            yield msg

    new, metrics = s.aggregate_train(1, stream())
    assert max(alive) <= 1 and metrics["num-replies"] == 10
    np.testing.assert_allclose(from_record(new)["a"], 4.5)


@pytest.mark.parametrize("oracle", [False, True])
def test_initial_state_is_the_seeded_model(oracle):
    cfg = parse_run_config({"model": "sasrec", "oracle": oracle, "dim": 8, "seed": 3})
    _, a = build_sequential_strategy(cfg, 20)
    _, b = build_sequential_strategy(cfg, 20)
    sa, sb = from_record(a), from_record(b)
    assert set(sa) == set(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert any(k.startswith("future.") for k in sa) == oracle
    assert isinstance(a, ArrayRecord)


def flower_server(kind, lr, start):
    from flwr.app import Array
    from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

    if kind == "adam":
        return FedAdam(eta=lr, beta_1=0.9, beta_2=0.99, tau=1e-3)
    if kind == "yogi":
        return FedYogi(eta=lr, beta_1=0.9, beta_2=0.99, tau=1e-3)
    s = FedAvgM(server_learning_rate=lr, server_momentum=0.7)
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    return s


@pytest.mark.parametrize("kind", ["adam", "yogi", "avgm"])
def test_a_server_optimiser_steps_as_flowers_strategy_over_the_weighted_mean(kind):
    from flwr.app import Array

    from florec.strategies.server_opt import ServerOptimizer

    current = state(0)
    ours = FedAvgParams(server_opt=ServerOptimizer(kind, 0.05, 0.7, 0.9, 0.99, 1e-3))
    flower = flower_server(kind, 0.05, current)
    for rnd in range(1, 4):
        list(ours.configure_train(rnd, to_record(current), ConfigRecord(), Grid(3)))
        parts = [(state(10 * rnd + i), w) for i, w in enumerate((3.0, 1.0, 2.0))]
        if kind != "avgm":  # Flower's FedOpt keeps plain numpy arrays here
            flower.current_arrays = dict(current)
        want, _ = flower.aggregate_train(rnd, [Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in a.items()}),
            "metrics": MetricRecord({"num-examples": w})}), reply_to=Message(
                RecordDict(), dst_node_id=1, message_type="train")) for a, w in parts])
        got, _ = ours.aggregate_train(rnd, (reply(a, w) for a, w in parts))
        got = from_record(got)
        for k in current:
            np.testing.assert_allclose(got[k], want[k].numpy(), rtol=1e-4, atol=1e-5)
        current = got
    assert set(ours.state_arrays()) >= {"m.a", "m.b"}


def test_server_lr_scales_the_step_from_the_current_state_and_a_discard_undoes_moments():
    from florec.strategies.server_opt import ServerOptimizer

    s = FedAvgParams(server_opt=ServerOptimizer("none", lr=2.0))
    list(s.configure_train(1, to_record(state(0)), ConfigRecord(), Grid(3)))
    new, _ = s.aggregate_train(1, [reply(state(1), 1.0)])
    want = state(0)["a"] + 2.0 * (state(1)["a"].astype(np.float64) - state(0)["a"])
    np.testing.assert_allclose(from_record(new)["a"], want, rtol=1e-6)
    adam = FedAvgParams(server_opt=ServerOptimizer("adam", lr=0.1))
    list(adam.configure_train(1, to_record(state(0)), ConfigRecord(), Grid(3)))
    adam.aggregate_train(1, [reply(state(1), 1.0)])
    adam.discard_round()
    assert adam.state_arrays() == {}


@pytest.mark.parametrize("extra, error", [
    ({"model": "sasrec", "server-opt": "adam", "server-lr": 0.01}, None),
    ({"model": "gru4rec", "server-lr": 3.0}, None),
    ({"model": "sasrec", "server-opt": "avgm", "defense": "median"}, "without a defense"),
    ({"model": "sasrec", "aggregation": "sum"}, "aggregation='sum' is implemented"),
    ({"algorithm": "fedcia", "model": "mf", "server-lr": 2.0}, "server-opt and server-lr"),
    ({"model": "sasrec", "aggregation": "item-weighted", "server-opt": "adam"}, None),
    ({"model": "mf", "aggregation": "item-weighted"}, "'item-weighted' is implemented"),
    ({"model": "sasrec", "aggregation": "item-weighted", "defense": "median"},
     "'item-weighted' is implemented"),
])
def test_server_steps_and_item_weighting_are_accepted_for_the_sequential_models_only(extra, error):
    from florec.recdata.errors import ConfigError
    from florec.strategies.registry import check_algorithm

    cfg = parse_run_config({"dataset": "synthetic", "algorithm": "fedavg"} | extra)
    if error is None:
        check_algorithm(cfg)
        strategy, _ = build_sequential_strategy(cfg, 20)
        assert strategy.server_opt.kind == cfg.server_opt
        assert strategy.server_opt.lr == cfg.server_lr
        assert strategy.item_weighted == (cfg.aggregation == "item-weighted")
    else:
        with pytest.raises(ConfigError, match=error):
            check_algorithm(cfg)
