"""Node-level defenses over dense model uploads (FedAvgParams: SASRec, GRU4Rec)."""

import numpy as np
import pytest

from florec.strategies.robust_params import robust_mean

DEFENSES = ("none", "norm-bound", "median", "trimmed-mean", "krum", "multi-krum")


def model(rng, scale=1.0):
    return {"emb": (scale * rng.normal(size=(6, 4))).astype(np.float32),
            "bias": (scale * rng.normal(size=6)).astype(np.float32)}


@pytest.mark.parametrize("defense", DEFENSES)
def test_each_dense_defense_equals_plain_averaging_when_all_updates_are_identical(defense):
    rng = np.random.default_rng(0)
    start, same = model(rng), model(rng)
    out = robust_mean(start, [same] * 5, np.array([1.0, 2, 3, 4, 5]), defense, norm=1e6,
                      trim=0.2, num_malicious=1)
    for k in start:
        np.testing.assert_allclose(out[k], same[k], rtol=1e-6, atol=1e-6)


def test_dense_trimmed_mean_and_median_remove_a_planted_outlier():
    rng = np.random.default_rng(1)
    start = model(rng)
    benign = [{k: v + 0.01 * rng.normal(size=v.shape) for k, v in start.items()}
              for _ in range(9)]
    outlier = {k: v + 100.0 for k, v in start.items()}
    weights = np.ones(10)
    mean = robust_mean(start, benign + [outlier], weights, "none")
    assert np.abs(mean["emb"] - start["emb"]).max() > 5  # plain FedAvg follows the outlier
    for defense in ("trimmed-mean", "median", "krum", "multi-krum"):
        out = robust_mean(start, benign + [outlier], weights, defense, trim=0.1,
                          num_malicious=1)
        assert np.abs(out["emb"] - start["emb"]).max() < 0.05, defense


def test_dense_norm_bound_clips_each_node_s_whole_change():
    start = {"w": np.zeros(4)}
    big, small = {"w": np.array([3.0, 4.0, 0.0, 0.0])}, {"w": np.array([0.0, 0.0, 0.3, 0.4])}
    out = robust_mean(start, [big, small], np.array([1.0, 1.0]), "norm-bound", norm=1.0)
    np.testing.assert_allclose(out["w"], [0.3, 0.4, 0.15, 0.2])  # (0.6, 0.8) and (.3, .4) / 2
