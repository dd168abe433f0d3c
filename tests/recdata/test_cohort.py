"""Seeded user cohorts: reproducible, independent of buckets, sized by fraction or count."""

import numpy as np
import pytest

from florec.recdata.cohort import (
    LOG_MAX_USERS,
    buckets_with_cohort,
    cohort_digest,
    cohort_log,
    cohort_size,
    sample_cohort,
)
from florec.recdata.errors import ConfigError
from florec.recdata.partition import partition_users


def test_same_seed_and_round_give_the_same_cohort():
    a = sample_cohort(3, 5, 1000, fraction=0.1)
    b = sample_cohort(3, 5, 1000, fraction=0.1)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000


def test_a_different_seed_or_round_gives_another_cohort():
    base = sample_cohort(3, 5, 1000, fraction=0.1)
    assert not np.array_equal(base, sample_cohort(4, 5, 1000, fraction=0.1))
    assert not np.array_equal(base, sample_cohort(3, 6, 1000, fraction=0.1))


def test_cohort_size_wins_over_the_fraction_and_full_cohorts_are_everyone():
    assert cohort_size(1000, 0.5, 7) == 7
    assert cohort_size(1000, 0.0004) == 1
    assert cohort_size(10, 0.25) == 2
    np.testing.assert_array_equal(sample_cohort(0, 1, 9), np.arange(9))
    np.testing.assert_array_equal(sample_cohort(0, 1, 9, size=9), np.arange(9))


def test_every_user_is_drawn_about_equally_often_over_rounds():
    counts = np.bincount(np.concatenate([sample_cohort(0, r, 50, size=10)
                                         for r in range(1, 501)]), minlength=50)
    assert counts.sum() == 5000
    np.testing.assert_allclose(counts / 500, 0.2, atol=0.05)


@pytest.mark.parametrize("fraction, size", [(0.0, 0), (1.5, 0), (0.5, -1), (0.5, 11)])
def test_bad_cohort_settings_fail_in_one_line(fraction, size):
    with pytest.raises(ConfigError) as err:
        cohort_size(10, fraction, size)
    assert "cohort-" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("users_per_node", [1, 10, 100])
def test_the_buckets_holding_the_cohort_are_exactly_those_with_a_cohort_user(users_per_node):
    buckets = partition_users(230, users_per_node=users_per_node, mode="random", seed=1)
    cohort = sample_cohort(0, 2, 230, size=17)
    hit = buckets_with_cohort(cohort, buckets)
    expected = {p for p, users in enumerate(buckets) if np.isin(users, cohort).any()}
    assert hit == expected
    assert sum(np.isin(buckets[p], cohort).sum() for p in hit) == 17


def test_the_logged_cohort_lists_ids_when_short_and_always_a_hash():
    short = cohort_log(np.array([5, 1, 9]))
    assert short["size"] == 3 and short["users"] == [5, 1, 9]
    assert short["sha256"] == cohort_digest(np.array([1, 5, 9]))
    long = cohort_log(np.arange(LOG_MAX_USERS + 1))
    assert "users" not in long and long["size"] == LOG_MAX_USERS + 1
    assert cohort_digest(np.arange(4)) != cohort_digest(np.arange(1, 5))
    assert cohort_log(np.arange(9), n_users=9) == {"size": 9, "all": True}
    assert cohort_log(np.arange(8), n_users=9)["users"] == list(range(8))
