r"""LightGCN (He et al., SIGIR 2020) on a user x item bipartite graph, BPR-softplus loss.

With ``A = [[0, R], [R^T, 0]]`` the bipartite adjacency of the train matrix ``R`` and ``D`` its
degree diagonal (zero degree -> zero inverse), the propagated tables are the layer mean

.. math:: \hat A = D^{-1/2} A D^{-1/2}, \qquad
          \begin{bmatrix}\bar P\\ \bar E\end{bmatrix}
          = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^{l} \begin{bmatrix}P\\ E\end{bmatrix},

where ``P`` (``user_emb``) and ``E`` (``item_emb``) are the layer-0 (ego) tables. Scores are
``P_bar[u] . E_bar[i]``. In federated use the graph is client-local: a node passes its own rows
(users re-indexed 0..B-1) and all items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from florec.models.base import Recommender, seeded_rows
from florec.models.mf import ITEM_SALT, USER_SALT


def normalized_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    r"""Symmetric-normalised bipartite adjacency :math:`D^{-1/2} A D^{-1/2}` (float64 CSR).

    Nodes ``0..U-1`` are the users (rows of ``train``), ``U..U+n-1`` the items.
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    np.divide(1.0, np.sqrt(deg), out=inv, where=deg > 0)
    d = sp.diags(inv)
    return sp.csr_matrix(d @ adj @ d)


def _to_torch_sparse(m: sp.spmatrix) -> torch.Tensor:
    """A scipy matrix as a coalesced float32 torch sparse COO tensor."""
    coo = m.tocoo()
    idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32),
                                   coo.shape, check_invariants=True).coalesce()


class LightGCN(Recommender):
    """LightGCN with layer-0 tables ``user_emb`` (private) and ``item_emb`` (shared).

    Parameters
    ----------
    n_users, n_items, dim : int
        Table sizes (``n_users`` = the rows of the graph given to :meth:`fit`).
    seed : int
        Ego rows come from (seed, row id) alone, with the same salts as
        :class:`florec.models.mf.MF`.
    init_std : float
        Standard deviation of the normal initialisation.
    reg : float
        Weight ``lambda`` of the L2 term on the ego rows of a batch.
    layers : int
        Propagation depth ``L``.

    Notes
    -----
    :meth:`fit` (alias :meth:`set_graph`) only installs the graph; it does not train. The graph
    is private data: it is not a buffer and never appears in the state dict. ``item_emb`` is the
    ego item table that FedCIA aligns.

    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, seed: int = 0,
                 init_std: float = 0.1, reg: float = 0.0, layers: int = 3) -> None:
        super().__init__()
        self.n_users, self.n_items, self.reg, self.layers = n_users, n_items, reg, layers
        self.user_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_users), dim, seed, init_std, USER_SALT)))
        self.item_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_items), dim, seed, init_std, ITEM_SALT)))
        self._adj: torch.Tensor | None = None
        self._adj_dev: torch.Tensor | None = None
        self._cache: tuple | None = None

    def set_graph(self, train: sp.spmatrix) -> LightGCN:
        """Install the normalised graph of ``train`` (shape (n_users, n_items))."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(f"train has shape {train.shape}, expected "
                             f"{(self.n_users, self.n_items)}")
        self._adj = _to_torch_sparse(normalized_adjacency(train))
        self._adj_dev, self._cache = None, None
        return self

    def fit(self, train: sp.spmatrix) -> LightGCN:
        """Set the graph (same as :meth:`set_graph`); training is by :meth:`loss`."""
        return self.set_graph(train)

    def train(self, mode: bool = True) -> LightGCN:
        """Switch mode and drop the cached propagated tables."""
        self._cache = None
        return super().train(mode)

    def _graph(self) -> torch.Tensor:
        if self._adj is None:
            raise RuntimeError("LightGCN has no graph: call fit(train_csr) first")
        dev = self.item_emb.device
        if self._adj_dev is None or self._adj_dev.device != dev:
            self._adj_dev = self._adj.to(dev)
        return self._adj_dev

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Layer-mean tables :math:`(\bar P, \bar E)` (differentiable)."""
        adj = self._graph()
        x = torch.cat([self.user_emb, self.item_emb])
        acc = x
        for _ in range(self.layers):
            x = torch.sparse.mm(adj, x)
            acc = acc + x
        out = acc / (self.layers + 1)
        return out[: self.n_users], out[self.n_users:]

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated tables; cached in eval mode without grad until a parameter changes."""
        if self.training or torch.is_grad_enabled():
            return self.propagate()
        u, i = self.user_emb, self.item_emb
        objs, state = (self._adj, u, i), (u._version, i._version, i.device, i.dtype)
        c = self._cache
        if c is None or c[1] != state or any(a is not b for a, b in zip(c[0], objs, strict=True)):
            self._cache = c = (objs, state, *self.propagate())
        return c[2], c[3]

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of all items: ``P_bar[users] @ E_bar^T``."""
        user_out, item_out = self._tables()
        return user_out[users] @ item_out.T

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        r"""Mean softplus BPR loss plus L2 on the batch's ego rows.

        .. math:: \mathcal L = \frac{1}{|B|}\sum_{(u,i,j)\in B}
                  \operatorname{softplus}(\bar p_u\cdot\bar e_j - \bar p_u\cdot\bar e_i)
                  + \lambda\,\frac{\lVert p_u\rVert^2+\lVert e_i\rVert^2+\lVert e_j\rVert^2}{2|B|}

        The L2 term is on the layer-0 (ego) rows of the batch, each occurrence counted, as in
        the LightGCN authors' PyTorch code (``reg_loss`` on ``userEmb0, posEmb0, negEmb0``) and
        RecBole's ``EmbLoss`` with ``require_pow=True``; the paper's setting is
        :math:`\lambda = 10^{-4}` with Adam lr :math:`10^{-3}`, RecBole's default reg 1e-5.
        """
        user_out, item_out = self.propagate()
        u = user_out[users]
        x = (u * item_out[neg]).sum(-1) - (u * item_out[pos]).sum(-1)
        ego = (self.user_emb[users].pow(2).sum() + self.item_emb[pos].pow(2).sum()
               + self.item_emb[neg].pow(2).sum())
        return F.softplus(x).mean() + self.reg * 0.5 * ego / len(users)
