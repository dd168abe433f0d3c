"""Samplers of Fair Sampling and its baselines, vectorised in torch and seeded (no rejection loops).

- :class:`TrainIndex`: membership tests and exact uniform draws from a binary train matrix.
- :func:`cell_batches`: every (user, item) cell of the U x I matrix once per epoch, shuffled,
  generated lazily batch by batch from one permutation of the cell ids (no Python lists).
- :func:`fs_point_supplements`: FS-Point's supplementary instance of each cell.
- :func:`pair_partners`: FS-Pair's (and CPR's) in-batch partner search with a capped cyclic offset;
  pairs without a valid partner are dropped and counted (the original code loops forever).

Random draws come from a caller-owned CPU ``torch.Generator`` and are moved to the index's
device, so a seed gives the same stream on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from florec.recdata.errors import DataError

__all__ = ["TrainIndex", "cell_batches", "fs_point_supplements", "pair_partners"]


def _shifted_keys(indptr: np.ndarray, indices: np.ndarray, width: int) -> np.ndarray:
    """``row * (width + 1) + (s_k - k)``: sorted keys that map the r-th non-member in one search."""
    counts = np.diff(indptr)
    row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    rank = np.arange(len(indices), dtype=np.int64) - indptr[row]
    return row * (width + 1) + indices.astype(np.int64) - rank


@dataclass
class TrainIndex:
    """Lookup structures of a binary (U, I) train matrix, on one device.

    Attributes
    ----------
    n_users, n_items : int
        Matrix shape.
    keys : torch.Tensor
        Sorted ``u * I + i`` of the train cells.
    pop : torch.Tensor
        ``(I,)`` int64 item popularity (train count).
    deg : torch.Tensor
        ``(U,)`` int64 user degree.

    """

    n_users: int
    n_items: int
    keys: torch.Tensor
    pop: torch.Tensor
    deg: torch.Tensor
    item_ptr: torch.Tensor
    item_users: torch.Tensor
    item_shift: torch.Tensor
    user_ptr: torch.Tensor
    user_shift: torch.Tensor

    @classmethod
    def from_csr(cls, train: sp.spmatrix, device: str | torch.device = "cpu") -> TrainIndex:
        """Build the index of a (users x items) matrix; nonzero entries are interactions."""
        by_user = sp.csr_matrix(train, copy=True)
        by_user.sum_duplicates()
        by_user.eliminate_zeros()
        by_user.sort_indices()
        by_item = by_user.tocsc()
        by_item.sort_indices()
        n_users, n_items = by_user.shape
        counts = np.diff(by_user.indptr)
        rows = np.repeat(np.arange(n_users, dtype=np.int64), counts)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.int64), device=device)  # noqa: E731
        return cls(
            n_users=n_users, n_items=n_items,
            keys=as_t(rows * n_items + by_user.indices),
            pop=as_t(np.diff(by_item.indptr)), deg=as_t(counts),
            item_ptr=as_t(by_item.indptr), item_users=as_t(by_item.indices),
            item_shift=as_t(_shifted_keys(by_item.indptr, by_item.indices, n_users)),
            user_ptr=as_t(by_user.indptr),
            user_shift=as_t(_shifted_keys(by_user.indptr, by_user.indices, n_items)),
        )

    @property
    def device(self) -> torch.device:
        """Where the index lives."""
        return self.keys.device

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each (user, item) is a train interaction, as a bool tensor."""
        if self.keys.numel() == 0:
            return torch.zeros(users.shape, dtype=torch.bool, device=users.device)
        q = users * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def _uniform(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64).to(self.device)

    def draw_non_users(self, items: torch.Tensor, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniform user who did **not** interact with each item, and whether one exists."""
        free = self.n_users - self.pop[items]
        r = torch.floor(self._uniform(len(items), gen) * free.clamp(min=1)).long()
        below = torch.searchsorted(self.item_shift, items * (self.n_users + 1) + r, right=True)
        return r + below - self.item_ptr[items], free > 0

    def draw_users(self, items: torch.Tensor, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniform user who interacted with each item, and whether one exists."""
        pop = self.pop[items]
        r = torch.floor(self._uniform(len(items), gen) * pop.clamp(min=1)).long()
        at = (self.item_ptr[items] + r).clamp(max=max(self.item_users.numel() - 1, 0))
        if self.item_users.numel() == 0:
            return torch.zeros_like(items), pop > 0
        return self.item_users[at], pop > 0

    def draw_negatives(self, users: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A uniform item each user has **not** interacted with (BPR's negative)."""
        free = self.n_items - self.deg[users]
        if bool((free <= 0).any()):
            raise DataError("a user has interacted with every item: no negative exists; "
                            "drop such users from the dataset")
        r = torch.floor(self._uniform(len(users), gen) * free).long()
        below = torch.searchsorted(self.user_shift, users * (self.n_items + 1) + r, right=True)
        return r + below - self.user_ptr[users]


def cell_batches(n_users: int, n_items: int, batch_size: int, gen: torch.Generator,
                 device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every cell (u, i) of the U x I matrix once, shuffled, in batches of ``batch_size``.

    The epoch's order is one seeded permutation of the cell ids ``u * I + i`` (int32 where it
    fits: 4 bytes a cell); users and items are decoded per batch on ``device``.

    Yields
    ------
    (torch.Tensor, torch.Tensor)
        int64 user and item ids of one batch.

    """
    n_cells = n_users * n_items
    dtype = torch.int32 if n_cells < 2**31 else torch.int64
    order = torch.randperm(n_cells, generator=gen, dtype=dtype)
    for s in range(0, n_cells, batch_size):
        cell = order[s : s + batch_size].to(device=device, dtype=torch.int64)
        yield cell // n_items, cell % n_items


def fs_point_supplements(index: TrainIndex, items: torch.Tensor, labels: torch.Tensor,
                         gen: torch.Generator, drop: bool = True) -> tuple[torch.Tensor, ...]:
    """FS-Point's supplementary instance of each cell (u, i, y): same item, opposite label.

    For ``y = 1`` a user is drawn uniformly among those who did not interact with i (label 0);
    for ``y = 0`` among those who did (label 1). Cells without a candidate are skipped.

    Returns
    -------
    tuple of torch.Tensor
        Users, items and float labels of the kept supplements; with ``drop=False`` all cells'
        draws plus a float ``keep`` mask (0 where there is no candidate), which avoids a
        device synchronisation.

    """
    pos = labels > 0.5
    non_users, has_non = index.draw_non_users(items, gen)
    users, has_users = index.draw_users(items, gen)
    sup_user = torch.where(pos, non_users, users)
    keep = torch.where(pos, has_non, has_users)
    if not drop:
        return sup_user, items, (~pos).to(torch.float32), keep.to(torch.float32)
    return sup_user[keep], items[keep], (~pos[keep]).to(torch.float32)


def pair_partners(index: TrainIndex, users: torch.Tensor, items: torch.Tensor,
                  max_offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch partner of each observed pair (u1, i1), tried at cyclic offsets 1, 2, ...

    Partner j of pair t is valid when u1 has not interacted with i_j **and** u_j has not
    interacted with i1. The search stops at ``max_offset`` (default: batch size - 1, i.e. every
    other pair once), so it always ends; pairs left without a partner are dropped.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``partner`` (B,) int64 batch positions (-1 where dropped) and ``valid`` (B,) bool.

    """
    n = len(users)
    partner = torch.full((n,), -1, dtype=torch.int64, device=users.device)
    cap = n - 1 if max_offset is None else min(int(max_offset), n - 1)
    todo = torch.arange(n, device=users.device)
    for d in range(1, cap + 1):
        if todo.numel() == 0:
            break
        j = (todo + d) % n
        bad = index.contains(users[todo], items[j]) | index.contains(users[j], items[todo])
        partner[todo[~bad]] = j[~bad]
        todo = todo[bad]
    return partner, partner >= 0
