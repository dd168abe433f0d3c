"""Shamir secret sharing over GF(2^521 - 1)."""

from __future__ import annotations

import itertools
import os

import pytest

from florec.protocol.shamir import combine, split


@pytest.mark.parametrize(("t", "n"), [(1, 1), (2, 3), (3, 5), (31, 61)])
def test_any_t_shares_rebuild_the_secret(t, n):
    secret = os.urandom(32)
    shares = split(secret, t, n)
    for subset in itertools.islice(itertools.combinations(range(n), t), 20):
        assert combine({i + 1: shares[i] for i in subset}) == secret
    assert combine({i + 1: s for i, s in enumerate(shares)}) == secret  # more than t is fine


def test_fewer_than_t_shares_do_not_rebuild_it():
    secret = os.urandom(32)
    shares = split(secret, 4, 6)
    with pytest.raises(ValueError, match="too few or altered"):
        combine({i + 1: shares[i] for i in range(3)})


def test_short_secrets_and_bad_arguments():
    assert combine(dict(enumerate(split(b"abc", 2, 2), start=1)), size=3) == b"abc"
    with pytest.raises(ValueError, match="threshold"):
        split(b"x" * 33, 2, 3)
    with pytest.raises(ValueError, match="threshold"):
        split(b"x", 4, 3)
