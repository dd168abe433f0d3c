"""The users a node hosts and their private data (rows of the global split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recdata.splits import Split


@dataclass
class Bucket:
    """One node's users: global ids and their rows of the split, re-indexed 0..B-1.

    Attributes
    ----------
    users : np.ndarray
        Sorted global user ids.
    train, valid, test : scipy.sparse.csr_matrix
        Binary (B, n_items) matrices with sorted indices.

    """

    users: np.ndarray
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def n_items(self) -> int:
        """Catalogue size."""
        return int(self.train.shape[1])

    @classmethod
    def from_split(cls, split: Split, users: np.ndarray) -> Bucket:
        """Take the rows of ``users`` from every part of the split."""
        rows = {}
        for part in ("train", "valid", "test"):
            m = split.matrix(part)[users].tocsr()
            m.sort_indices()
            rows[part] = m
        return cls(users=np.asarray(users, dtype=np.int64), **rows)

    def mask_for(self, part: str) -> sp.csr_matrix:
        """Items excluded from ranking: train for ``valid``, train + valid for ``test``."""
        if part == "valid":
            return self.train
        m = (self.train + self.valid).tocsr()
        m.data[:] = 1.0
        return m
