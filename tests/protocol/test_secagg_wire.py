"""Secure aggregation's wire format: packed vectors, rosters, node state, FedAvg's layout."""

import numpy as np
import pytest

from florec.protocol.fedavg_upload import node_payload
from florec.protocol.fixed_point import quant_bits
from florec.protocol.secagg import SecAggNode
from florec.protocol.secagg_wire import (
    decode_roster,
    encode_roster,
    fedavg_range,
    fedavg_sums,
    fedavg_vector,
    node_from_json,
    node_to_json,
    pack,
    unpack,
)


def test_packed_vectors_sum_to_the_float_and_integer_sums_and_count_clipped_entries():
    rng = np.random.default_rng(0)
    n, clip = 61, 2.0
    floats = [rng.uniform(-3, 3, 50) for _ in range(n)]
    ints = [rng.integers(0, 1000, 7) for _ in range(n)]
    total = np.zeros(50 + 7 + 1, np.uint32)
    for f, i in zip(floats, ints, strict=True):
        total = total + pack(f, i, clip, n)
    got_f, got_i, clipped = unpack(total, 50, clip, n, n)
    want_f = sum(np.clip(f, -clip, clip) for f in floats)
    np.testing.assert_allclose(got_f, want_f, atol=n * clip / (2 ** quant_bits(n) - 1))
    np.testing.assert_array_equal(got_i, sum(ints))
    assert clipped == sum(int((np.abs(f) > clip).sum()) for f in floats) > 0


def test_integers_that_could_wrap_the_modulus_are_refused():
    with pytest.raises(ValueError, match="2|nodes"):
        pack(np.zeros(2), np.array([2**32 // 10]), 1.0, 10)
    with pytest.raises(ValueError):
        pack(np.zeros(2), np.array([-1]), 1.0, 10)


def test_rosters_keep_flower_sized_node_ids():
    ids = [2**63 + 5, 7, 2**64 - 1]
    roster = {i: (bytes([k]) * 32, bytes([k + 1]) * 32) for k, i in enumerate(ids)}
    assert decode_roster(encode_roster(roster)) == roster


def test_a_node_state_survives_its_json_round_trip():
    node, peer = SecAggNode(2**64 - 3, 2, b"round=1"), SecAggNode(5, 2, b"round=1")
    node.share({node.node_id: node.advertise(), 5: peer.advertise()})
    node.revealed = {5: "b"}
    again = node_from_json(node_to_json(node))
    for key in ("node_id", "threshold", "info", "c_sk", "s_sk", "b_seed", "own_share", "roster",
                "revealed"):
        assert getattr(again, key) == getattr(node, key), key


def test_the_sparse_layout_scatters_into_the_dense_one():
    rng = np.random.default_rng(1)
    n_items, d = 12, 3
    row_user, row_item = rng.integers(0, 4, 20), rng.integers(0, n_items, 20)
    delta, bias = rng.normal(size=(20, d)), rng.normal(size=20)
    dense, _ = node_payload("dense", n_items, row_user, row_item, delta, bias, np.ones(4))
    sparse, _ = node_payload("sparse", n_items, row_user, row_item, delta, bias, np.ones(4))
    f_dense, i_dense = fedavg_vector(dense, n_items)
    f_sparse, counts = fedavg_vector(sparse, n_items)
    np.testing.assert_allclose(f_sparse, f_dense, atol=1e-5)
    assert len(i_dense) == 0
    np.testing.assert_array_equal(counts, np.bincount(row_item, minlength=n_items))
    emb, b, c = fedavg_sums(f_sparse, counts, n_items, d)
    np.testing.assert_allclose(emb, dense["item_emb"], atol=1e-5)
    np.testing.assert_allclose(b, dense["item_bias"], atol=1e-5)


def test_the_automatic_range_is_wide_only_for_interaction_weighted_dense_uploads():
    assert fedavg_range(0.0, "dense", "interactions") == 1e4
    assert fedavg_range(0.0, "sparse", "interactions") == fedavg_range(0.0, "dense", "uniform")
    assert fedavg_range(3.0, "dense", "interactions") == 3.0
