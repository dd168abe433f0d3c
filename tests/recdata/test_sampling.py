import numpy as np
import pytest
import scipy.sparse as sp

from florec.recdata.sampling import sample_negatives


def test_negatives_are_never_seen_items_and_uniform():
    rng = np.random.default_rng(0)
    seen = sp.csr_matrix((rng.random((20, 30)) < 0.4).astype(np.float32))
    users = rng.integers(0, 20, 60000)
    neg = sample_negatives(users, seen, rng.random(len(users)))
    assert not seen[users, neg].any()
    counts = np.bincount(neg[users == 5], minlength=30)
    unseen = np.flatnonzero(seen[5].toarray().ravel() == 0)
    assert set(np.flatnonzero(counts)) == set(unseen)
    expected = (users == 5).sum() / len(unseen)
    assert np.all(np.abs(counts[unseen] - expected) < 5 * np.sqrt(expected))


def test_user_who_saw_every_item_has_no_negative():
    seen = sp.csr_matrix(np.ones((1, 4)))
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(np.array([0]), seen, np.array([0.5]))
