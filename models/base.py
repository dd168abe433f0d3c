"""The one model interface every FloRec recommender implements, central and federated alike."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

#: :func:`seeded_rows` caches a full table ``0..n-1`` once it has more than this many rows
SEEDED_CACHE_MIN_ROWS = 64


def _rows(ids: list[int], dim: int, seed: int, std: float, salt: int) -> np.ndarray:
    out = np.empty((len(ids), dim), dtype=np.float32)
    for j, i in enumerate(ids):
        out[j] = np.random.default_rng([seed, salt, i]).normal(0.0, std, dim)
    return out


@functools.lru_cache(maxsize=16)
def _first_rows(n: int, dim: int, seed: int, std: float, salt: int) -> np.ndarray:
    rows = _rows(list(range(n)), dim, seed, std, salt)
    rows.flags.writeable = False
    return rows


def seeded_rows(ids: np.ndarray, dim: int, seed: int, std: float, salt: int) -> np.ndarray:
    """Initial embedding rows that depend only on (seed, salt, row id).

    Every node, bucket size and the central trainer therefore start from identical rows. The
    full table ``0..n-1`` (an item table) is computed once per process and copied.
    """
    ids = np.asarray(ids)
    if len(ids) > SEEDED_CACHE_MIN_ROWS and ids[0] == 0 \
            and np.array_equal(ids, np.arange(len(ids))):
        return _first_rows(len(ids), dim, seed, std, salt).copy()
    return _rows(ids.tolist(), dim, seed, std, salt)


class Recommender(nn.Module, ABC):
    """Scores all items for a batch of users; knows which parameters are private.

    Parameters whose name starts with ``user_`` are private (user side): in federated runs they
    stay on the node. Every other parameter or buffer is shared.
    """

    private_prefix = "user_"

    @abstractmethod
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of all items, shape (len(users), n_items)."""

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch of (user, positive, negative) triples."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable loss")

    @property
    def trainable(self) -> bool:
        """Whether the model learns by gradient steps."""
        return any(p.requires_grad for p in self.parameters())

    def shared_state(self) -> dict[str, np.ndarray]:
        """Shared (non-private) tensors as numpy arrays."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()
                if not k.startswith(self.private_prefix)}

    def private_state(self) -> dict[str, np.ndarray]:
        """Private (user-side) tensors as numpy arrays."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()
                if k.startswith(self.private_prefix)}

    def load_shared_state(self, state: dict[str, np.ndarray]) -> None:
        """Overwrite shared tensors in place."""
        own = self.state_dict()
        for k, v in state.items():
            if k.startswith(self.private_prefix) or k not in own:
                raise KeyError(f"'{k}' is not a shared tensor of {type(self).__name__}")
            own[k].copy_(torch.as_tensor(v))
