"""Seeded user cohorts: which users train in a round, recomputable anywhere from (seed, round).

Every user is a logical client. Each round a cohort of ``k`` users is drawn without replacement
from the whole population ``0..n_users-1`` with a generator seeded by ``(seed, round)`` only, so
the server and every node compute the same cohort without exchanging user ids, and the cohort
does not depend on how users are grouped into buckets (nor on Flower's node ids).
"""

from __future__ import annotations

import hashlib

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.seeds import Salt, stream

#: rounds.jsonl lists the cohort's user ids up to this size (always its size and hash)
LOG_MAX_USERS = 2048


def cohort_size(n_users: int, fraction: float = 1.0, size: int = 0) -> int:
    """Users per round: ``size`` if > 0, else ``max(1, round(fraction * n_users))``.

    Raises
    ------
    ConfigError
        If ``fraction`` is outside (0, 1] or ``size`` is negative or exceeds ``n_users``.

    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"cohort-fraction={fraction} is outside (0, 1]; set e.g. 0.1")
    if size < 0 or size > n_users:
        raise ConfigError(f"cohort-size={size} must lie in 0..{n_users} (the users of the "
                          "dataset); 0 uses cohort-fraction")
    if size > 0:
        return size
    return max(1, min(n_users, int(round(fraction * n_users))))


def sample_cohort(seed: int, server_round: int, n_users: int, fraction: float = 1.0,
                  size: int = 0) -> np.ndarray:
    """The sorted global user ids that train in ``server_round``.

    Parameters
    ----------
    seed : int
        Run seed.
    server_round : int
        Round number (1-based).
    n_users : int
        Population size.
    fraction, size : float, int
        See :func:`cohort_size`.

    Returns
    -------
    np.ndarray
        Sorted int64 user ids; all users when the cohort is the whole population.

    """
    k = cohort_size(n_users, fraction, size)
    if k >= n_users:
        return np.arange(n_users, dtype=np.int64)
    rng = stream(seed, Salt.COHORT, server_round)
    return np.sort(rng.choice(n_users, size=k, replace=False)).astype(np.int64)


def cohort_digest(users: np.ndarray) -> str:
    """SHA-256 (hex, first 16 characters) of the sorted int64 user ids."""
    data = np.ascontiguousarray(np.sort(np.asarray(users, dtype=np.int64))).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def cohort_log(users: np.ndarray, n_users: int = 0) -> dict[str, object]:
    """The ``cohort`` entry of a rounds.jsonl line: size, hash, and the ids when short.

    A cohort of all ``n_users`` users is logged as ``{"size": n_users, "all": true}``.
    """
    if n_users and len(users) == n_users:
        return {"size": int(n_users), "all": True}
    entry: dict[str, object] = {"size": int(len(users)), "sha256": cohort_digest(users)}
    if len(users) <= LOG_MAX_USERS:
        entry["users"] = [int(u) for u in users]
    return entry


def buckets_with_cohort(cohort: np.ndarray, buckets: list[np.ndarray]) -> set[int]:
    """Indices of the buckets (partition ids) that hold at least one cohort user."""
    n = max((int(b.max()) + 1 for b in buckets if len(b)), default=0)
    owner = np.full(max(n, int(cohort.max(initial=-1)) + 1), -1, dtype=np.int64)
    for pid, users in enumerate(buckets):
        owner[users] = pid
    hit = owner[cohort]
    return {int(p) for p in np.unique(hit[hit >= 0])}
