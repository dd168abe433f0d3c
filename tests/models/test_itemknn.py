import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.itemknn import ItemKNN, cosine_item_similarity


def test_cosine_similarity_matches_a_hand_computed_case():
    # items 0 and 1 share one of their users; item 2 shares nothing with item 0
    r = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]], dtype=float))
    sim = cosine_item_similarity(r, k=0).toarray()
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2 * 3)) and sim[0, 0] == 0
    np.testing.assert_allclose(sim, sim.T)
    np.testing.assert_allclose(sim[1, 2], 1 / np.sqrt(3 * 2))


def test_pruning_keeps_the_k_most_similar_items_per_row():
    rng = np.random.default_rng(0)
    r = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(float))
    full, pruned = cosine_item_similarity(r, 0).toarray(), cosine_item_similarity(r, 3).toarray()
    for i in range(12):
        assert (pruned[i] > 0).sum() <= 3
        kept = np.flatnonzero(pruned[i])
        assert set(kept) <= set(np.argsort(-full[i])[:3])


def test_scores_sum_similarities_to_the_users_items():
    r = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 1]], dtype=float))
    model = ItemKNN(2, 3, k=0).fit(r)
    sim = cosine_item_similarity(r, 0).toarray()
    np.testing.assert_allclose(model.score(torch.tensor([1])).numpy()[0], sim[1] + sim[2])
