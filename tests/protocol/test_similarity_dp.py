"""User-level DP for FedCIA's similarity uploads: the Frobenius clip bounds every client."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from florec.protocol.similarity_dp import SENSITIVITY_FACTOR, clip_similarity, similarity_norm


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), d=st.integers(1, 12),
       clip=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3))
def test_clipping_bounds_every_clients_similarity_upload(seed, n, d, clip, scale):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)) * scale
    clipped, before = clip_similarity(emb, clip)
    gram = clipped @ clipped.T
    after = float(np.linalg.norm(gram))
    assert before == pytest.approx(float(np.linalg.norm(emb @ emb.T)), rel=1e-9)
    assert after <= clip * (1 + 1e-9)
    if before <= clip:  # under the bound: the upload is untouched
        np.testing.assert_array_equal(clipped, emb)
    else:  # over it: S is scaled onto the bound, its direction kept
        assert after == pytest.approx(clip, rel=1e-9)
        np.testing.assert_allclose(gram, emb @ emb.T * (clip / before), rtol=1e-9,
                                   atol=1e-12 * clip)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), clip=st.floats(1e-2, 1e2))
def test_swapping_one_clients_data_moves_the_sum_by_at_most_the_sensitivity(seed, clip):
    rng = np.random.default_rng(seed)
    clients = [rng.standard_normal((15, 4)) * rng.uniform(0.01, 10) for _ in range(5)]
    other = rng.standard_normal((15, 4)) * rng.uniform(0.01, 10)  # one user changes client 0

    def upload_sum(tables):
        return sum(e @ e.T for e in (clip_similarity(t, clip)[0] for t in tables))

    moved = np.linalg.norm(upload_sum(clients) - upload_sum([other, *clients[1:]]))
    assert moved <= SENSITIVITY_FACTOR * clip * (1 + 1e-9)
    removed = np.linalg.norm(upload_sum(clients) - upload_sum(clients[1:]))
    assert removed <= clip * (1 + 1e-9)


def test_the_norm_is_computed_without_forming_the_n_by_n_similarity():
    emb = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    assert similarity_norm(emb) == pytest.approx(
        float(np.linalg.norm(emb.astype(np.float64) @ emb.T.astype(np.float64))), rel=1e-9)
    clipped, _ = clip_similarity(emb, 1.0)
    assert clipped.dtype == np.float32


def test_a_non_positive_clip_is_refused():
    with pytest.raises(ValueError, match="dp-clip"):
        clip_similarity(np.ones((3, 2)), 0.0)
