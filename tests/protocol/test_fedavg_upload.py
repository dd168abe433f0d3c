"""A FedAvg node's pre-summed upload: the row sums match ``np.add.at`` bit for bit."""

import tracemalloc

import numpy as np
import pytest

from florec.protocol.fedavg_upload import node_payload, row_sums


def _rows(rng, n_rows, d):
    """Float32 rows over twelve orders of magnitude (so the order of additions shows)."""
    scale = 10.0 ** rng.integers(-6, 6, (n_rows, 1))
    rows = (rng.normal(size=(n_rows, d)) * scale).astype(np.float32)
    if n_rows:
        rows[0] = -0.0
    return rows


@pytest.mark.parametrize(("n_rows", "n", "d"), [(0, 0, 4), (0, 5, 4), (1, 3, 1), (5000, 40, 8)])
def test_row_sums_equal_add_at_bit_for_bit(n_rows, n, d):
    rng = np.random.default_rng(n_rows + n)
    index = rng.integers(0, max(n, 1), n_rows)
    rows = _rows(rng, n_rows, d)
    want = np.zeros((n, d))
    np.add.at(want, index, rows)
    got = row_sums(index, rows, n)
    assert got.dtype == np.float64 and got.shape == (n, d)
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


@pytest.mark.parametrize("block_bytes", [1, 3 * (24 * 5000 + 8 * 40), 1 << 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sums_in_column_blocks_equal_add_at_bit_for_bit(block_bytes, dtype):
    # 1 byte: one column a block; 3 columns' worth: blocks of 3, 3 and 2; 1 TiB: one block
    rng = np.random.default_rng(7)
    index = rng.integers(0, 40, 5000)
    rows = _rows(rng, 5000, 8).astype(dtype)
    want = np.zeros((40, 8))
    np.add.at(want, index, rows)
    got = row_sums(index, rows, 40, block_bytes)
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    w = rng.integers(0, 4, 5000) * rng.random(5000)  # weighted: as add.at of rows * w
    want_w = np.zeros((40, 8))
    np.add.at(want_w, index, rows * w[:, None])
    got_w = row_sums(index, rows, 40, block_bytes, weights=w)
    np.testing.assert_array_equal(got_w.view(np.int64), want_w.view(np.int64))


def test_row_sums_temporary_memory_stays_within_the_block():
    rng = np.random.default_rng(1)
    index, rows = rng.integers(0, 100, 20000), _rows(rng, 20000, 64)
    peaks = []
    for block_bytes in (1 << 20, 1 << 40):
        tracemalloc.start()
        row_sums(index, rows, 100, block_bytes)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    out = 100 * 64 * 8
    assert peaks[0] <= out + (1 << 20)
    assert peaks[1] >= 4 * peaks[0]  # unblocked: ~20 MB of cells and weights at once


def test_weighted_row_sums_stay_within_the_block():
    rng = np.random.default_rng(2)
    index, rows, w = rng.integers(0, 100, 20000), _rows(rng, 20000, 64), rng.random(20000)
    tracemalloc.start()
    row_sums(index, rows, 100, 1 << 20, weights=w)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= 100 * 64 * 8 + (1 << 20)  # no (R, d) float64 product made up front


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_node_payload_sums_every_users_rows_as_add_at_does(mode):
    rng = np.random.default_rng(3)
    n_items, n_users, d, n_rows = 30, 7, 4, 400
    row_user = rng.integers(0, n_users, n_rows)
    row_item = rng.integers(0, n_items, n_rows)
    delta, bias = _rows(rng, n_rows, d), rng.normal(size=n_rows).astype(np.float32)
    weight = rng.integers(0, 4, n_users).astype(np.float64)
    arrays, total = node_payload(mode, n_items, row_user, row_item, delta, bias, weight)
    if mode == "dense":
        want = np.zeros((n_items, d))
        np.add.at(want, row_item, delta * weight[row_user][:, None])
        assert total == weight.sum()
    else:
        items = np.unique(row_item)
        assert np.array_equal(arrays["items"], items)
        want = np.zeros((len(items), d))
        np.add.at(want, np.searchsorted(items, row_item), delta)
        assert np.array_equal(arrays["counts"], np.bincount(row_item)[items])
    assert arrays["item_emb"].dtype == np.float32
    np.testing.assert_array_equal(arrays["item_emb"], want.astype(np.float32))


def test_an_empty_sparse_payload_has_no_rows():
    arrays, total = node_payload("sparse", 10, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                 np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                 np.zeros(0))
    assert arrays["item_emb"].shape == (0, 4) and arrays["item_emb"].dtype == np.float32
    assert len(arrays["items"]) == 0 and total == 0.0
