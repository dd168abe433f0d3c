"""The node's half of user-level DP: clipping bounds every user, Poisson sampling, node noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from florec.client.trainers.dp_clip import clip_user_updates, node_noise, poisson_sample, user_norms
from florec.recdata.runconfig import parse_run_config


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n_users=st.integers(1, 12), d=st.integers(1, 8),
       clip=st.floats(1e-3, 1e3), scale=st.floats(1e-4, 1e4))
def test_clipping_bounds_every_users_whole_update(seed, n_users, d, clip, scale):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 40))
    row_user = np.sort(rng.integers(0, n_users, rows))
    delta = (rng.standard_normal((rows, d)) * scale).astype(np.float32)
    bias = (rng.standard_normal(rows) * scale).astype(np.float32)
    new_delta, new_bias, before = clip_user_updates(row_user, delta, bias, clip)
    after = user_norms(row_user, new_delta, new_bias, len(before))
    assert np.all(after <= clip * (1 + 1e-9))
    # unclipped users are untouched, clipped ones keep their direction and land on C
    small = before[row_user] <= clip
    np.testing.assert_array_equal(new_delta[small], delta[small])
    big = before > clip
    np.testing.assert_allclose(after[big], clip, rtol=1e-5)
    ratio = new_delta[~small] / np.where(delta[~small] == 0, 1, delta[~small])
    ok = delta[~small] != 0
    per_row = (before[row_user[~small]] / clip)[:, None] * ratio
    np.testing.assert_allclose(per_row[ok], 1.0, rtol=1e-4)


def test_one_user_changes_a_node_sum_by_at_most_the_clip():
    rng = np.random.default_rng(0)
    row_user = np.repeat(np.arange(5), 7)
    row_item = np.concatenate([rng.choice(20, 7, replace=False) for _ in range(5)])
    delta, bias = rng.standard_normal((35, 4)) * 3, rng.standard_normal(35) * 3
    d1, b1, _ = clip_user_updates(row_user, delta, bias, 0.5)

    def table(keep):
        emb, b = np.zeros((20, 4)), np.zeros(20)
        np.add.at(emb, row_item[keep], d1[keep])
        np.add.at(b, row_item[keep], b1[keep])
        return np.concatenate([emb.ravel(), b])

    diff = table(np.ones(35, bool)) - table(row_user != 2)  # the node's sum without user 2
    assert 0.4 < np.linalg.norm(diff) <= 0.5 + 1e-6


def test_poisson_sampling_includes_each_user_with_probability_q():
    q, n = 0.2, 20000
    sizes = [len(poisson_sample(n, q, np.random.default_rng(r))) for r in range(1, 6)]
    assert all(abs(s - q * n) < 5 * np.sqrt(n * q * (1 - q)) for s in sizes)
    np.testing.assert_array_equal(poisson_sample(50, 1.0), np.arange(50))


def test_a_nodes_poisson_sample_is_not_recomputable_from_the_runs_seed():
    """Fresh OS entropy each call: the server, who knows the seed, cannot know who took part."""
    draws = {tuple(poisson_sample(200, 0.5)) for _ in range(4)}
    assert len(draws) == 4


def test_node_noise_shares_sum_to_the_central_noise_over_the_whole_table():
    cfg = parse_run_config({"dp": True, "dp-mode": "distributed", "dp-clip": 2.0})
    n_items, d, n_nodes, z = 400, 16, 8, 1.5
    sparse = {"items": np.array([3, 7]), "item_emb": np.ones((2, d), np.float32),
              "item_bias": np.ones(2, np.float32), "counts": np.array([1, 2])}
    total = np.zeros((n_items, d))
    for _ in range(n_nodes):
        up = node_noise(cfg, sparse, n_items, z, n_nodes)
        np.testing.assert_array_equal(up["items"], np.arange(n_items))
        assert up["counts"][7] == 2 and up["counts"].sum() == 3
        total += up["item_emb"]
    total[[3, 7]] -= n_nodes
    assert total.std() == pytest.approx(z * 2.0, rel=0.05)
    assert node_noise(cfg, sparse, n_items, 0.0, n_nodes) is sparse
