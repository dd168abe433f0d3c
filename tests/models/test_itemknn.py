import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.itemknn import ItemKNN, cosine_item_similarity, prune_columns


def test_cosine_similarity_matches_a_hand_computed_case():
    # items 0 and 1 share one of their users; item 2 shares nothing with item 0
    r = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]], dtype=float))
    sim = cosine_item_similarity(r, k=0).toarray()
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2 * 3)) and sim[0, 0] == 0
    np.testing.assert_allclose(sim, sim.T)
    np.testing.assert_allclose(sim[1, 2], 1 / np.sqrt(3 * 2))


def test_pruning_keeps_the_k_most_similar_sources_of_each_target_item():
    """RecBole's rule on a hand-made matrix: each column (target) keeps its k largest entries."""
    sim = np.array([[0.0, 0.9, 0.1, 0.4],
                    [0.9, 0.0, 0.8, 0.3],
                    [0.1, 0.8, 0.0, 0.7],
                    [0.4, 0.3, 0.7, 0.0]])
    expected = np.array([[0.0, 0.9, 0.0, 0.4],
                         [0.9, 0.0, 0.8, 0.0],
                         [0.0, 0.8, 0.0, 0.7],
                         [0.4, 0.0, 0.7, 0.0]])
    np.testing.assert_array_equal(prune_columns(sim, 2), expected)
    np.testing.assert_array_equal(prune_columns(sim, 0), sim)


def test_column_pruning_differs_from_row_pruning_on_an_asymmetric_case():
    """Target 0's neighbours are kept even where item 0 is not among its sources' top k."""
    sim = np.array([[0.0, 0.5, 0.6],
                    [0.5, 0.0, 0.9],
                    [0.6, 0.9, 0.0]])
    cols = prune_columns(sim, 1)
    np.testing.assert_array_equal(cols[:, 0], [0.0, 0.0, 0.6])  # target 0 keeps source 2
    np.testing.assert_array_equal(cols[:, 1], [0.0, 0.0, 0.9])
    rows = prune_columns(sim.T, 1).T  # the other rule: each source keeps its top target
    assert not np.array_equal(cols, rows)


def test_every_column_of_the_similarity_keeps_at_most_k_sources():
    rng = np.random.default_rng(0)
    r = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(float))
    full, pruned = cosine_item_similarity(r, 0).toarray(), cosine_item_similarity(r, 3).toarray()
    for i in range(12):
        kept = np.flatnonzero(pruned[:, i])
        assert len(kept) <= 3
        assert set(kept) <= set(np.argsort(-full[:, i])[:3])
        np.testing.assert_allclose(pruned[kept, i], full[kept, i])


def test_shrinkage_adds_to_the_cosine_denominator():
    r = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]], dtype=float))
    sim = cosine_item_similarity(r, k=0, shrink=2.0).toarray()
    assert sim[0, 1] == pytest.approx(1 / (np.sqrt(2 * 3) + 2.0))
    assert sim[1, 2] == pytest.approx(1 / (np.sqrt(3 * 2) + 2.0))


def test_itemknn_takes_k_and_shrink_from_the_run_config():
    from florec.models.registry import model_from_config
    from florec.recdata.runconfig import parse_run_config

    cfg = parse_run_config({"model": "itemknn", "itemknn-k": 5, "itemknn-shrink": 1.5})
    model = model_from_config(cfg, "itemknn", 4, 8)
    assert (model.k, model.shrink) == (5, 1.5)


def test_scores_sum_similarities_to_the_users_items():
    r = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 1]], dtype=float))
    model = ItemKNN(2, 3, k=0).fit(r)
    sim = cosine_item_similarity(r, 0).toarray()
    np.testing.assert_allclose(model.score(torch.tensor([1])).numpy()[0], sim[1] + sim[2])


def test_shrinkage_follows_recbole_and_demotes_neighbours_with_little_support():
    """sim = dot / (|a||b| + h) (RecBole ``ComputeSimilarity``) on a hand-made matrix.

    Items 0 and 1 share their only user (cosine 1, support 1); items 2 and 3 share 4 users out
    of 4 and 9 (cosine 4/6). Shrinkage 10 gives 1/11 and 4/16: the well-supported pair wins.
    """
    r = np.zeros((10, 4))
    r[0, [0, 1]] = 1
    r[1:5, 2] = 1
    r[1:10, 3] = 1
    r = sp.csr_matrix(r)
    plain = cosine_item_similarity(r, k=0).toarray()
    shrunk = cosine_item_similarity(r, k=0, shrink=10.0).toarray()
    assert plain[0, 1] == pytest.approx(1.0) and plain[2, 3] == pytest.approx(4 / 6)
    assert shrunk[0, 1] == pytest.approx(1 / 11) and shrunk[2, 3] == pytest.approx(4 / 16)
    np.testing.assert_allclose(shrunk, shrunk.T)
    assert shrunk[0, 2] == 0 and np.all(np.diag(shrunk) == 0)
    # with k = 1 each target keeps its best-supported source
    np.testing.assert_allclose(cosine_item_similarity(r, k=1, shrink=10.0).toarray()[:, 3],
                               [0.0, 0.0, 0.25, 0.0])
