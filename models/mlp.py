r"""MLP scorer over concatenated user and item embeddings (FedCIA's MLP backbone).

.. math:: s_{ui} = \mathrm{MLP}([p_u; e_i]) \quad(\text{a logit};\ \sigma(s_{ui})
          \text{ is the probability}),

with ReLU hidden layers and a linear output unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from florec.models.base import Recommender, seeded_rows
from florec.models.mf import ITEM_SALT, USER_SALT
from florec.recdata.seeds import Salt, stream

#: Largest number of hidden activations (users x items x width) built at once in :meth:`score`.
SCORE_CHUNK_ELEMS = 1 << 24


def _seeded_linear(n_in: int, n_out: int, seed: int, layer: int) -> nn.Linear:
    """A linear layer with torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) scheme, seeded."""
    lin = nn.Linear(n_in, n_out)
    bound = 1.0 / np.sqrt(n_in)
    rng = stream(seed, Salt.MLP_INIT, layer)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(rng.uniform(-bound, bound, (n_out, n_in))))
        lin.bias.copy_(torch.from_numpy(rng.uniform(-bound, bound, n_out)))
    return lin


class MLPScorer(Recommender):
    """MLP on ``[p_u; e_i]``, trained with binary cross-entropy on positives and negatives.

    Parameters
    ----------
    n_users, n_items, dim : int
        Table sizes.
    seed : int
        Embedding rows come from (seed, row id) (salts of :class:`florec.models.mf.MF`); MLP weights
        from (seed, layer), so every client starts from the same shared weights.
    init_std : float
        Standard deviation of the normal embedding initialisation.
    reg : float
        Weight ``lambda`` of the L2 term.
    hidden : int or sequence of int
        Hidden layer widths (FedCIA: ``[32]``).

    Notes
    -----
    Parameters: ``user_emb`` (private), ``item_emb`` and ``mlp.*`` (shared).

    """

    def __init__(self, n_users: int, n_items: int, dim: int = 32, seed: int = 0,
                 init_std: float = 0.1, reg: float = 0.0, hidden: int | Sequence[int] = 32
                 ) -> None:
        super().__init__()
        self.reg = reg
        widths = [2 * dim, *([hidden] if isinstance(hidden, int) else list(hidden))]
        self.user_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_users), dim, seed, init_std, USER_SALT)))
        self.item_emb = nn.Parameter(torch.from_numpy(
            seeded_rows(np.arange(n_items), dim, seed, init_std, ITEM_SALT)))
        layers: list[nn.Module] = []
        for k in range(len(widths) - 1):
            layers += [_seeded_linear(widths[k], widths[k + 1], seed, k), nn.ReLU()]
        layers.append(_seeded_linear(widths[-1], 1, seed, len(widths) - 1))
        self.mlp = nn.Sequential(*layers)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Paired logits ``MLP([p_u; e_i])`` for equal-length ``users`` and ``items``."""
        x = torch.cat([self.user_emb[users], self.item_emb[items]], dim=-1)
        return self.mlp(x).squeeze(-1)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        r"""Logits of all items for each user, vectorised and chunked over users.

        The first layer splits as :math:`W[p; e] + b = W_p p + (W_e e + b)`, so the
        ``(B, n, 2d)`` input is never built; only ``(chunk, n, width)`` activations are.
        """
        first, rest = self.mlp[0], self.mlp[1:]
        d = self.user_emb.shape[1]
        user_part = self.user_emb[users] @ first.weight[:, :d].T
        item_part = self.item_emb @ first.weight[:, d:].T + first.bias
        n, width = item_part.shape
        step = max(1, SCORE_CHUNK_ELEMS // max(1, n * width))
        out = [rest(user_part[c:c + step, None, :] + item_part[None, :, :]).squeeze(-1)
               for c in range(0, len(user_part), step)]
        return torch.cat(out) if out else item_part.new_zeros(0, n)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        r"""BCE on positives (label 1) and negatives (label 0), plus L2 (as FedCIA's code).

        .. math:: \mathcal L = \tfrac12\big[\mathrm{BCE}(s_{ui}, 1) + \mathrm{BCE}(s_{uj}, 0)\big]
                  + \lambda\Big(\frac{\lVert p_u\rVert^2 + \lVert e_i\rVert^2
                  + \lVert e_j\rVert^2}{2|B|}
                  + \sum_{\theta\in\mathrm{MLP}}\lVert\theta\rVert^2\Big)

        Each BCE is a batch mean (on logits, numerically stable); the MLP sum covers weights and
        biases.
        """
        pos_logit, neg_logit = self.logits(users, pos), self.logits(users, neg)
        bce = 0.5 * (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                     + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))
        emb = (self.user_emb[users].pow(2).sum() + self.item_emb[pos].pow(2).sum()
               + self.item_emb[neg].pow(2).sum()) / (2 * len(users))
        weights = sum(p.pow(2).sum() for p in self.mlp.parameters())
        return bce + self.reg * (emb + weights)
