"""Server optimisers: FedAvgRec's FedAdam / FedYogi / FedAvgM steps equal Flower's classes."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import node_payload
from florec.recdata.errors import ConfigError
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.server_opt import ServerOptimizer

N, D = 5, 3
LR, B1, B2, TAU, MU = 0.05, 0.9, 0.99, 1e-3, 0.7


@pytest.fixture(autouse=True)
def _task_identity():
    LocalGrid({}, 1, handlers={})  # sets the run/task ids a Flower process would set


def as_reply(content: RecordDict) -> Message:
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


def flower_strategy(kind: str, start: dict[str, np.ndarray]):
    if kind == "adam":
        return FedAdam(eta=LR, beta_1=B1, beta_2=B2, tau=TAU)
    if kind == "yogi":
        return FedYogi(eta=LR, beta_1=B1, beta_2=B2, tau=TAU)
    s = FedAvgM(server_learning_rate=LR, server_momentum=MU)
    s.current_arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    return s


@pytest.mark.parametrize("kind", ["adam", "yogi", "avgm"])
def test_fedavgrec_server_step_equals_flowers_strategy_on_a_dense_toy(kind):
    rng = np.random.default_rng(0)
    current = {"item_emb": rng.normal(size=(N, D)), "item_bias": rng.normal(size=N)}
    ours = FedAvgRec("dense", server_opt=ServerOptimizer(kind, LR, MU, B1, B2, TAU))
    flower = flower_strategy(kind, current)
    for rnd in range(1, 5):
        weights = [3.0, 1.0, 2.0]
        deltas = [{k: rng.normal(size=v.shape) for k, v in current.items()} for _ in weights]
        flower_replies, our_replies = [], []
        for w, d in zip(weights, deltas, strict=True):
            tables = {k: current[k] + d[k] for k in current}
            flower_replies.append(as_reply(RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in tables.items()}),
                "metrics": MetricRecord({"num-examples": w})})))
            payload, weight = node_payload("dense", N, np.zeros(N, np.int64), np.arange(N),
                                           d["item_emb"], d["item_bias"], np.array([w]))
            our_replies.append(as_reply(RecordDict({
                "arrays": to_record(payload),
                "metrics": MetricRecord({"weight": weight, "num-users": 1, "num-pairs": 1,
                                         "loss-sum": 0.0})})))
        if kind != "avgm":
            flower.current_arrays = dict(current)
        ours.current = {k: v.astype(np.float32) for k, v in current.items()}
        want, _ = flower.aggregate_train(rnd, flower_replies)
        got, _ = ours.aggregate_train(rnd, our_replies)
        want = {k: a.numpy() for k, a in want.items()}
        got = from_record(got)
        for k in current:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
        current = {k: want[k].astype(np.float64) for k in current}


def test_server_none_adds_server_lr_times_the_update():
    opt = ServerOptimizer("none", lr=0.5)
    new = opt.step({"a": np.ones(3)}, {"a": np.array([2.0, 0.0, -2.0])}, 1)
    np.testing.assert_allclose(new["a"], [2.0, 1.0, 0.0])
    assert opt.state_arrays() == {}


def test_server_adam_moments_move_untouched_rows_and_survive_a_state_round_trip():
    opt = ServerOptimizer("adam", lr=0.1)
    x = {"a": np.zeros(2)}
    x = opt.step(x, {"a": np.array([1.0, 0.0])}, 1)
    again = ServerOptimizer("adam", lr=0.1)
    again.load_state_arrays(opt.state_arrays())
    y1 = opt.step(x, {"a": np.zeros(2)}, 2)
    y2 = again.step(x, {"a": np.zeros(2)}, 2)
    assert y1["a"][0] > x["a"][0]  # momentum keeps moving a row with no change this round
    np.testing.assert_allclose(y1["a"], y2["a"])


def test_a_discarded_round_leaves_the_server_moments_as_they_were():
    strategy = FedAvgRec("sum", server_opt=ServerOptimizer("adam", lr=0.1))
    strategy.server_opt.m = {"item_emb": np.ones((N, D))}
    strategy._saved_opt = strategy.server_opt.copy_state()
    strategy.server_opt.step({"item_emb": np.zeros((N, D))}, {"item_emb": np.ones((N, D))}, 1)
    strategy.discard_round()
    np.testing.assert_array_equal(strategy.server_opt.m["item_emb"], np.ones((N, D)))


def test_unknown_server_optimiser_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="server-opt 'sgdm' is unknown"):
        ServerOptimizer("sgdm")
