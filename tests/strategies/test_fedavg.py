"""FedAvgRec aggregation math, streaming, byte counts and rejection of bad replies."""

import gc
import logging
import weakref

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

import florec.strategies.fedavg as fedavg_module
from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import node_payload
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedavg import FedAvgRec, scatter_add

N, D = 6, 3


def replies_for(strategy, payloads, weights):
    """Run configure_train on a fake grid whose nodes answer with the given payloads."""
    answers = iter(zip(payloads, weights, strict=True))

    def handler(msg, ctx):
        arrays, w = next(answers)
        return Message(
            RecordDict(
                {
                    "arrays": arrays if isinstance(arrays, ArrayRecord) else to_record(arrays),
                    "metrics": MetricRecord(
                        {"weight": w, "num-users": 1, "num-pairs": 1, "loss-sum": 0.5}
                    ),
                }
            ),
            reply_to=msg,
        )

    grid = LocalGrid({}, len(payloads), handlers={MessageType.TRAIN: handler})
    start = {"item_emb": np.ones((N, D), np.float32), "item_bias": np.zeros(N, np.float32)}
    msgs = strategy.configure_train(1, to_record(start), ConfigRecord(), grid)
    return grid.send_and_receive(msgs)


def test_dense_mode_is_the_interaction_weighted_mean_of_user_tables():
    # user A (3 interactions) moved item 0 by +1, user B (1 interaction) by -1
    pa, wa = node_payload(
        "dense", N, np.array([0]), np.array([0]), np.ones((1, D)), np.ones(1), np.array([3.0])
    )
    pb, wb = node_payload(
        "dense", N, np.array([0]), np.array([0]), -np.ones((1, D)), -np.ones(1), np.array([1.0])
    )
    strategy = FedAvgRec("dense")
    arrays, metrics = strategy.aggregate_train(1, replies_for(strategy, [pa, pb], [wa, wb]))
    emb = from_record(arrays)["item_emb"]
    np.testing.assert_allclose(emb[0], 1 + (3 - 1) / 4, rtol=1e-6)
    np.testing.assert_allclose(emb[1:], 1.0)
    assert metrics["num-replies"] == 2


def test_sparse_mode_averages_each_row_over_the_users_that_touched_it():
    pa, _ = node_payload(
        "sparse", N, np.array([0, 0]), np.array([0, 2]), np.ones((2, D)), np.zeros(2), np.ones(1)
    )
    pb, _ = node_payload(
        "sparse", N, np.array([0]), np.array([0]), 3 * np.ones((1, D)), np.zeros(1), np.ones(1)
    )
    strategy = FedAvgRec("sparse")
    arrays, _ = strategy.aggregate_train(1, replies_for(strategy, [pa, pb], [0.0, 0.0]))
    emb = from_record(arrays)["item_emb"]
    np.testing.assert_allclose(emb[0], 1 + (1 + 3) / 2)
    np.testing.assert_allclose(emb[2], 1 + 1)
    np.testing.assert_allclose(emb[[1, 3, 4, 5]], 1.0)
    assert pa["items"].tolist() == [0, 2]  # only touched rows travel


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_bad_replies_are_skipped_with_a_log_line(mode, caplog):
    good, w = node_payload(
        mode, N, np.array([0]), np.array([1]), np.ones((1, D)), np.ones(1), np.ones(1)
    )
    nan = {k: v.copy() for k, v in good.items()}
    nan["item_emb"] = nan["item_emb"] * np.nan
    wrong = {k: (v[:, :2] if k == "item_emb" else v) for k, v in good.items()}
    strategy = FedAvgRec(mode)
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(
            1, replies_for(strategy, [good, nan, wrong], [w, w, w])
        )
    assert metrics["num-replies"] == 1
    assert len(strategy.dropped) == 2
    assert np.isfinite(from_record(arrays)["item_emb"]).all()
    text = caplog.text
    assert "NaN" in text and "shape" in text


def test_bytes_are_counted_both_ways():
    pa, wa = node_payload(
        "dense", N, np.array([0]), np.array([0]), np.ones((1, D)), np.ones(1), np.ones(1)
    )
    strategy = FedAvgRec("dense")
    strategy.aggregate_train(1, replies_for(strategy, [pa, pa], [wa, wa]))
    table = N * D * 4 + N * 4  # float32 payload; each array adds its .npy header on the wire
    assert 2 * table <= strategy.bytes_down <= 2 * (table + 2 * 256)
    assert strategy.bytes_up == strategy.bytes_down


def stream_replies(strategy, payload, weight, count, alive):
    """Yield ``count`` replies made one at a time; ``alive`` records the live count at each.

    Each reply is built only when the consumer asks for the next one (the grid runs the node
    then), and a finalizer drops it from ``alive["now"]`` once nothing references it.
    """
    handler_calls = iter([(payload, weight)] * count)

    def handler(msg, ctx):
        arrays, w = next(handler_calls)
        return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(
            {"weight": w, "num-users": 1, "num-pairs": 1, "loss-sum": 0.5})}), reply_to=msg)

    grid = LocalGrid({}, count, handlers={MessageType.TRAIN: handler}, keep_replies=False)
    start = {"item_emb": np.ones((N, D), np.float32), "item_bias": np.zeros(N, np.float32)}
    ids = list(grid.push_messages(strategy.configure_train(1, to_record(start), ConfigRecord(),
                                                           grid)))

    def gone():
        alive["now"] -= 1

    def replies():
        for msg_id in ids:
            gc.collect()  # count replies that are still reachable, not uncollected garbage
            (reply,) = grid.pull_messages([msg_id])
            alive["now"] += 1
            alive["peak"] = max(alive["peak"], alive["now"])
            weakref.finalize(reply, gone)
            yield reply
            del reply

    return replies()


def test_aggregation_holds_at_most_two_replies_at_a_time():
    """A streaming fold keeps the reply it is reading and maybe the previous one, never all."""
    pa, wa = node_payload(
        "dense", N, np.array([0]), np.array([0]), np.ones((1, D)), np.ones(1), np.ones(1)
    )
    strategy = FedAvgRec("dense")
    alive = {"now": 0, "peak": 0}
    arrays, metrics = strategy.aggregate_train(1, stream_replies(strategy, pa, wa, 8, alive))
    assert metrics["num-replies"] == 8 and arrays is not None
    assert alive["peak"] <= 2, f"{alive['peak']} replies alive at once: replies were buffered"


def test_the_reply_counter_sees_a_buffering_aggregator():
    """The counter itself: list(replies) keeps all 8 alive (so the bound above can fail)."""
    pa, wa = node_payload(
        "dense", N, np.array([0]), np.array([0]), np.ones((1, D)), np.ones(1), np.ones(1)
    )
    strategy = FedAvgRec("dense")
    alive = {"now": 0, "peak": 0}
    buffered = list(stream_replies(strategy, pa, wa, 8, alive))
    strategy.aggregate_train(1, buffered)
    assert alive["peak"] == 8


def test_node_sampling_is_seeded_by_round():
    s = FedAvgRec("dense", fraction_train=0.5, seed=3)
    nodes = list(range(10, 30))
    assert s.sample(nodes, 1) == s.sample(nodes, 1)
    assert len(s.sample(nodes, 1)) == 10
    assert s.sample(nodes, 1) != s.sample(nodes, 2)


def test_nodes_without_cohort_users_get_no_message_but_unknown_nodes_do():
    from florec.recdata.cohort import sample_cohort

    strategy = FedAvgRec("dense", seed=0)
    strategy.set_cohorts(0, 100, 1.0, 3, [np.arange(p * 10, p * 10 + 10) for p in range(10)])
    strategy.set_partitions({500 + p: p for p in range(9)})  # node 509's partition is unknown
    chosen = strategy.sample([500 + p for p in range(10)], 4)
    cohort = sample_cohort(0, 4, 100, size=3)
    assert chosen == sorted({500 + int(u) // 10 for u in cohort} | {509})
    np.testing.assert_array_equal(strategy.round_cohort, cohort)
    assert strategy.node_name(503) == "node 503 (partition 3)"
    assert strategy.node_name(509) == "node 509"


def test_a_full_cohort_keeps_every_sampled_node():
    strategy = FedAvgRec("dense", fraction_train=0.5, seed=1)
    strategy.set_cohorts(1, 20, 1.0, 0, [np.arange(p * 2, p * 2 + 2) for p in range(10)])
    strategy.set_partitions({p + 1: p for p in range(10)})
    plain = FedAvgRec("dense", fraction_train=0.5, seed=1)
    assert strategy.sample(list(range(1, 11)), 2) == plain.sample(list(range(1, 11)), 2)
    assert len(strategy.round_cohort) == 20


@pytest.mark.parametrize("items", [[0, 2, 5], [5, 0, 2], [2, 2, 0, 2], []])
def test_scatter_add_adds_as_add_at_for_sorted_and_repeated_items(items):
    rng = np.random.default_rng(len(items))
    items = np.asarray(items, dtype=np.int64)
    values = (rng.normal(size=(len(items), D)) * 1e6).astype(np.float32)
    counts = rng.integers(1, 5, len(items))
    start = rng.normal(size=(N, D))
    got_emb, got_den = start.copy(), np.ones(N)
    scatter_add(items, [(got_emb, values), (got_den, counts)])
    want_emb, want_den = start.copy(), np.ones(N)
    np.add.at(want_emb, items, values)
    np.add.at(want_den, items, counts)
    np.testing.assert_array_equal(got_emb, want_emb)
    np.testing.assert_array_equal(got_den, want_den)


def test_sparse_replies_with_repeated_items_still_count_every_row():
    # a hand-made reply may list an item twice; both rows count (as np.add.at adds them)
    twice = {"items": np.array([1, 1]), "item_emb": np.ones((2, D), np.float32),
             "item_bias": np.ones(2, np.float32), "counts": np.array([1, 1])}
    strategy = FedAvgRec("sparse")
    arrays, _ = strategy.aggregate_train(1, replies_for(strategy, [twice], [0.0]))
    emb = from_record(arrays)["item_emb"]
    np.testing.assert_allclose(emb[1], 2.0)  # 1 + (1 + 1) / 2
    np.testing.assert_allclose(np.delete(emb, 1, axis=0), 1.0)


def _sparse(items, rows=None):
    """A sparse upload over ``items`` (``rows`` value rows each, default one per item)."""
    k = len(items) if rows is None else rows
    return {"items": np.asarray(items), "item_emb": np.full((k, D), 2.0, np.float32),
            "item_bias": np.ones(k, np.float32), "counts": np.ones(k, np.int64)}


def _undecodable():
    """A record whose ``item_emb`` header promises more bytes than follow it."""
    record = to_record(_sparse([1]))
    whole = record["item_emb"]
    record["item_emb"] = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype,
                               data=whole.data[:-4])
    return record


HOSTILE = {
    "undecodable": (_undecodable, "undecodable arrays"),
    "float items": (lambda: _sparse(np.array([1.0, 2.0])), "dtype float64"),
    "bool items": (lambda: _sparse(np.array([False, True])), "dtype bool"),
    "one row for two items": (lambda: _sparse([1, 2], rows=1), "different lengths"),
    "short bias": (lambda: _sparse([1, 2]) | {"item_bias": np.ones(1, np.float32)},
                   "different lengths"),
    "long counts": (lambda: _sparse([1, 2]) | {"counts": np.ones(3, np.int64)},
                    "different lengths"),
    "complex item_emb": (lambda: _sparse([1]) | {"item_emb": np.full((1, D), 1 + 1j)},
                         "dtype complex128"),
    "complex inf item_emb": (lambda: _sparse([1]) | {"item_emb": np.full((1, D), np.inf + 0j)},
                             "dtype complex128"),
    "datetime bias": (lambda: _sparse([1]) | {"item_bias": np.array(["2020-01-01"], "M8[D]")},
                      "dtype datetime64[D]"),
    "str counts": (lambda: _sparse([1]) | {"counts": np.array(["a"])}, "dtype <U1"),
}


@pytest.mark.parametrize("mode", ["sparse", "sum"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_one_malformed_reply_is_dropped_and_the_rest_aggregate_as_without_it(mode, name,
                                                                             caplog):
    make, reason = HOSTILE[name]
    good = [_sparse([0, 2]), _sparse([2, 4])]
    alone = FedAvgRec(mode)
    want, want_metrics = alone.aggregate_train(1, replies_for(alone, good, [0.0, 0.0]))
    strategy = FedAvgRec(mode)
    with caplog.at_level(logging.WARNING):
        got, metrics = strategy.aggregate_train(
            1, replies_for(strategy, [good[0], make(), good[1]], [0.0] * 3))
    assert len(strategy.dropped) == 1 and not alone.dropped
    (line,) = [r.getMessage() for r in caplog.records if "skipping reply" in r.getMessage()]
    assert reason in line and "\n" not in line
    assert metrics["num-replies"] == want_metrics["num-replies"] == 2
    for key, table in from_record(want).items():
        np.testing.assert_array_equal(from_record(got)[key], table)


def test_a_dense_reply_of_complex_values_is_dropped_with_its_dtype(caplog):
    good = {"item_emb": np.ones((N, D), np.float32), "item_bias": np.ones(N, np.float32)}
    bad = good | {"item_emb": np.full((N, D), 1 + 1j)}
    strategy = FedAvgRec("dense")
    with caplog.at_level(logging.WARNING):
        _, metrics = strategy.aggregate_train(1, replies_for(strategy, [good, bad], [1.0, 1.0]))
    assert len(strategy.dropped) == 1 and metrics["num-replies"] == 1
    assert any("dtype complex128, expected real numbers" in r.getMessage()
               for r in caplog.records)


def test_a_sorted_distinct_sparse_reply_is_folded_without_add_at(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("np.add.at called")

    pa, _ = node_payload("sparse", N, np.array([0, 0, 1]), np.array([4, 0, 2]),
                         np.ones((3, D)), np.ones(3), np.ones(2))
    strategy = FedAvgRec("sparse")
    replies = replies_for(strategy, [pa], [0.0])
    monkeypatch.setattr(fedavg_module.np.add, "at", refuse, raising=False)
    with pytest.raises(AssertionError, match="np.add.at called"):
        scatter_add(np.array([2, 1]), [(np.zeros(N), np.ones(2))])
    arrays, _ = strategy.aggregate_train(1, replies)
    emb = from_record(arrays)["item_emb"]
    np.testing.assert_allclose(emb[[0, 2, 4]], 2.0)
    np.testing.assert_allclose(emb[[1, 3, 5]], 1.0)
