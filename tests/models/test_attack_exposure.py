"""ER@K and the target's mean rank on hand-made cases; target selection."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.exposure import exposure_sums, finalize_exposure, parse_targets
from florec.recdata.errors import ConfigError


def csr(rows, n_users=3, n_items=6):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_users, n_items))


def test_er_at_k_and_mean_rank_on_a_hand_made_case():
    scores = torch.tensor([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0: item 0 masked (train)
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 1: interacted with target 5 -> only target 4
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # user 2: all tied, order by item id
    ])
    mask = csr([[0], [], [1]])
    interacted = csr([[0], [5], [1]])
    targets = np.array([4, 5])
    sums = exposure_sums(lambda u: scores[u], np.arange(3), mask, interacted, targets, [2, 4])
    # ranks: user 0 -> item 4 is 4th, item 5 is 5th (item 0 masked); user 1 -> item 4 is 2nd;
    # user 2 -> item 4 is 4th, item 5 is 5th (item 1 masked, ties by id)
    assert sums["exposure/num-users"] == 3
    assert sums["exposure/er@2"] == pytest.approx(0 + 1 + 0)
    assert sums["exposure/er@4"] == pytest.approx(0.5 + 1 + 0.5)
    assert sums["exposure/target-rank@all"] == pytest.approx(4.5 + 2 + 4.5)
    means = finalize_exposure(sums)
    assert means["er@4"] == pytest.approx(2 / 3)
    assert means["target-rank@all"] == pytest.approx(11 / 3)


def test_users_who_interacted_with_every_target_are_not_counted():
    scores = torch.zeros(2, 4)
    sums = exposure_sums(lambda u: scores[u], np.arange(2), csr([[], []], 2, 4),
                         csr([[3], []], 2, 4), np.array([3]), [1])
    assert sums["exposure/num-users"] == 1 and sums["exposure/target-rank@all"] == 4


def test_unpopular_targets_come_from_the_least_popular_items_and_are_seeded():
    popularity = np.arange(100)  # item 0 never seen, item 99 the most popular
    a = parse_targets("unpopular:5", popularity, 0, 103)
    assert len(a) == 5 and a.min() >= 1 and a.max() <= 20
    assert np.array_equal(a, parse_targets("unpopular:5", popularity, 0, 103))
    assert parse_targets("7,3,7", popularity, 0, 103).tolist() == [3, 7]
    with pytest.raises(ConfigError, match="outside"):
        parse_targets("100", popularity, 0, 103)
    with pytest.raises(ConfigError, match="unpopular:N"):
        parse_targets("unpopular:x", popularity, 0, 103)
