"""Item-based k-nearest neighbours with cosine similarity: a classic central baseline."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.base import Recommender


def cosine_item_similarity(train: sp.spmatrix, k: int = 100) -> sp.csr_matrix:
    r"""Item-item cosine similarity of binary interactions, pruned to each item's ``k`` largest.

    .. math:: s_{ij} = \frac{|U_i \cap U_j|}{\sqrt{|U_i|}\sqrt{|U_j|}},\quad s_{ii} = 0

    where :math:`U_i` is the set of users of item :math:`i`. ``k = 0`` keeps every neighbour.
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    r.data[:] = 1.0
    norms = np.sqrt(np.asarray(r.sum(axis=0)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = (r.T @ r).toarray() * inv[:, None] * inv[None, :]
    np.fill_diagonal(sim, 0.0)
    if 0 < k < sim.shape[0]:
        cut = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        keep = np.zeros_like(sim, dtype=bool)
        np.put_along_axis(keep, cut, True, axis=1)
        sim = np.where(keep, sim, 0.0)
    return sp.csr_matrix(sim)


class ItemKNN(Recommender):
    """Scores ``R[users] @ S``: the summed similarity of each item to the user's items.

    Parameters
    ----------
    n_users, n_items : int
        Shape of the train matrix passed to :meth:`fit`.
    k : int
        Neighbours kept per item (0 = all, the default: it reproduces the FedCIA reference
        ItemKNN, R@10 .1637 / NDCG@10 .4823 on the authors' ML-100K split).
    """

    def __init__(self, n_users: int, n_items: int, k: int = 0) -> None:
        super().__init__()
        self.n_users, self.n_items, self.k = n_users, n_items, k
        self._train: sp.csr_matrix | None = None
        self._sim: sp.csr_matrix | None = None

    def fit(self, train: sp.spmatrix) -> ItemKNN:
        """Remember the train rows and compute the pruned similarity."""
        self._train = sp.csr_matrix(train, dtype=np.float64)
        self._sim = cosine_item_similarity(self._train, self.k)
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of all items for the users, float64."""
        if self._train is None:
            raise RuntimeError("ItemKNN needs fit(train) before scoring")
        rows = self._train[users.cpu().numpy()] @ self._sim
        return torch.as_tensor(rows.toarray())
