"""The users a node hosts and their private data (rows of the global split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from florec.recdata.splits import Split, ranking_mask


@dataclass
class Bucket:
    """One node's users: global ids and their rows of the split, re-indexed 0..B-1.

    Attributes
    ----------
    users : np.ndarray
        Sorted global user ids.
    train, valid, test : scipy.sparse.csr_matrix
        Binary (B, n_items) matrices with sorted indices.
    groups : list of np.ndarray, optional
        Local row indices of each client when the node hosts several.
    population : int
        Users of the whole dataset (user cohorts are drawn from ``0..population-1``).

    """

    users: np.ndarray
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    groups: list[np.ndarray] | None = None
    population: int = 0

    def subset(self, rows: np.ndarray) -> Bucket:
        """The bucket restricted to local rows ``rows`` (sorted), e.g. a round's cohort users."""
        rows = np.asarray(rows, dtype=np.int64)
        return Bucket(self.users[rows], self.train[rows], self.valid[rows], self.test[rows],
                      population=self.population)

    def clients(self) -> list[Bucket]:
        """The node's clients as buckets of their own (one, the whole bucket, by default)."""
        if self.groups is None or len(self.groups) == 1:
            return [self]
        return [Bucket(self.users[g], self.train[g], self.valid[g], self.test[g],
                       population=self.population) for g in self.groups]

    def mask_for(self, part: str) -> sp.csr_matrix:
        """Items excluded from ranking ``part`` (:func:`florec.recdata.splits.ranking_mask`)."""
        return ranking_mask(part, self.train, self.valid)

    @property
    def n_items(self) -> int:
        """Catalogue size."""
        return int(self.train.shape[1])

    @classmethod
    def from_split(cls, split: Split, users: np.ndarray | list[np.ndarray]) -> Bucket:
        """Take the rows of ``users`` (or of several clients' users) from every part."""
        groups = None
        if isinstance(users, list):
            sizes = np.cumsum([0] + [len(u) for u in users])
            groups = [np.arange(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            users = np.concatenate(users)
        rows = {}
        for part in ("train", "valid", "test"):
            m = split.matrix(part)[users].tocsr()
            m.sort_indices()
            rows[part] = m
        return cls(users=np.asarray(users, dtype=np.int64), groups=groups,
                   population=int(split.n_users), **rows)

