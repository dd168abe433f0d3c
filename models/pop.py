"""Most-popular recommender: the sanity baseline."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.base import Recommender


class Pop(Recommender):
    """Scores every item by its number of training interactions, the same for every user."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.register_buffer("item_count", torch.zeros(n_items))

    def fit(self, train: sp.csr_matrix) -> Pop:
        """Count training interactions per item."""
        counts = np.asarray(train.sum(axis=0)).ravel()
        self.item_count.copy_(torch.as_tensor(counts, dtype=torch.float32))
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """The popularity row, repeated for each user."""
        return self.item_count.expand(len(users), -1).clone()
