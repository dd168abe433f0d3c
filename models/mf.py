"""Matrix factorisation with item bias, trained with the BPR loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from florec.models.base import Recommender, seeded_rows
from florec.recdata.seeds import Salt

USER_SALT, ITEM_SALT = Salt.USER_INIT, Salt.ITEM_INIT


def bpr_terms(
    user_vec: torch.Tensor,
    pos_vec: torch.Tensor,
    neg_vec: torch.Tensor,
    pos_bias: torch.Tensor,
    neg_bias: torch.Tensor,
    reg: float,
) -> torch.Tensor:
    r"""Per-triple BPR loss with L2 on the rows it touches.

    .. math:: \ell = -\log\sigma(p_u^\top q_i + b_i - p_u^\top q_j - b_j)
              + \lambda(\lVert p_u\rVert^2 + \lVert q_i\rVert^2 + \lVert q_j\rVert^2)
    """
    x = (user_vec * (pos_vec - neg_vec)).sum(-1) + pos_bias - neg_bias
    penalty = user_vec.pow(2).sum(-1) + pos_vec.pow(2).sum(-1) + neg_vec.pow(2).sum(-1)
    return -F.logsigmoid(x) + reg * penalty


class MF(Recommender):
    """Matrix factorisation ``score(u, i) = p_u . q_i + b_i``.

    Parameters
    ----------
    n_users, n_items, dim : int
        Table sizes.
    seed : int
        Rows are initialised from (seed, row id) alone, see :func:`florec.models.base.seeded_rows`.
    init_std : float
        Standard deviation of the normal initialisation.
    reg : float
        L2 weight on the rows of each triple.

    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, seed: int = 0,
                 init_std: float = 0.1, reg: float = 0.0) -> None:
        super().__init__()
        self.reg = reg
        self.user_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_users), dim, seed, init_std, USER_SALT)))
        self.item_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_items), dim, seed, init_std, ITEM_SALT)))
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    @classmethod
    def from_arrays(cls, user_emb: np.ndarray, item_emb: np.ndarray, item_bias: np.ndarray,
                    reg: float = 0.0) -> MF:
        """Build from existing tables (e.g. a node's private rows and the global item table)."""
        model = cls(0, 0, dim=item_emb.shape[1], reg=reg)
        model.user_emb = nn.Parameter(torch.as_tensor(user_emb, dtype=torch.float32))
        model.item_emb = nn.Parameter(torch.as_tensor(item_emb, dtype=torch.float32))
        model.item_bias = nn.Parameter(torch.as_tensor(item_bias, dtype=torch.float32))
        return model

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of all items: ``P[users] Q^T + b``."""
        return self.user_emb[users] @ self.item_emb.T + self.item_bias

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Mean BPR loss over the triples (see :func:`bpr_terms`)."""
        return bpr_terms(self.user_emb[users], self.item_emb[pos], self.item_emb[neg],
                         self.item_bias[pos], self.item_bias[neg], self.reg).mean()
