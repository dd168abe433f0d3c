"""CoT-Rec's retriever: FloRec's SASRec with text-initialised item rows and a per-user token.

Inputs carry the user id in column 0 when the user token is on (see
:class:`florec.models.sasrec.SASRec`); :func:`with_users` builds them. Training is FloRec's
sequential recipe (last ``max-seq-len`` train items, every position a full-softmax CE sample),
with the user column added to every past sample.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from florec.client.trainers.sequential import EpochStats
from florec.models.metrics import topk_items
from florec.models.rng import cpu_seeded
from florec.models.sasrec import SASRec
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.sequences import past_samples, sample_positions


def build_retriever(cfg: RunConfig, n_items: int, n_users: int,
                    item_init: np.ndarray | None = None, user_init: np.ndarray | None = None
                    ) -> SASRec:
    """SASRec of ``cfg`` (weights from ``cfg.seed`` alone) with CoT-Rec's options.

    A user token exists when ``cotrec-user-token`` is on; ``user_init`` (``(n_users, dim)``) then
    sets its rows, else they are random. ``item_init`` (``(n_items, dim)``) sets the item rows.

    Raises
    ------
    ConfigError
        If an initial table has the wrong shape, or ``dim`` is not a multiple of ``heads``.

    """
    if cfg.dim % cfg.heads:
        raise ConfigError(f"dim={cfg.dim} is not a multiple of heads={cfg.heads}; change one")
    for name, table, rows in (("item", item_init, n_items), ("user", user_init, n_users)):
        if table is not None and table.shape != (rows, cfg.dim):
            raise ConfigError(f"the initial {name} table is {table.shape}, expected "
                              f"({rows}, {cfg.dim}); rebuild it with dim={cfg.dim}")
    tokens = n_users if cfg.cotrec_user_token else 0
    with cpu_seeded(cfg.seed):
        return SASRec(n_items, max_len=cfg.max_seq_len, dim=cfg.dim, heads=cfg.heads,
                      layers=cfg.seq_layers, dropout=cfg.dropout, n_user_tokens=tokens,
                      item_init=item_init, user_init=user_init if tokens else None)


def with_users(model: SASRec, users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Model inputs: ``seqs`` with the user ids as column 0 if the model has a user token."""
    if model.user_token is None:
        return seqs
    return np.concatenate([np.asarray(users, dtype=np.int64)[:, None], seqs], axis=1)


def train_epoch(model: SASRec, optimizer: torch.optim.Optimizer, windows: np.ndarray,
                users: np.ndarray, rng: np.random.Generator, batch_size: int,
                device: str = "cpu") -> EpochStats:
    """One shuffled pass of full-softmax CE over every position of ``windows`` (rows = users)."""
    model.train()
    rows, cols = sample_positions(windows)
    order = rng.permutation(len(rows))
    rows, cols = rows[order], cols[order]
    stats = EpochStats(positions=len(rows))
    for s in range(0, len(rows), batch_size):
        r, c = rows[s : s + batch_size], cols[s : s + batch_size]
        seq, pos = past_samples(windows, r, c)
        seq = with_users(model, users[r], seq)
        pos_t = torch.as_tensor(pos, dtype=torch.int64, device=device)
        optimizer.zero_grad()
        loss = model.loss(torch.as_tensor(seq, dtype=torch.int64, device=device), pos_t,
                          torch.zeros_like(pos_t), kind="ce")
        loss.backward()
        optimizer.step()
        stats.loss_sum += loss.item() * len(r)
    return stats


def top_k(model: SASRec, inputs: np.ndarray, mask: sp.csr_matrix, k: int = 10,
          chunk: int = 1024, device: str = "cpu") -> np.ndarray:
    """``(U, k)`` full-ranking top-``k`` item ids (mask rows -> -inf, FloRec's tie order)."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(inputs), chunk):
            seq = torch.as_tensor(inputs[s : s + chunk], dtype=torch.int64, device=device)
            scores = model.score(seq)
            m = mask[s : s + chunk].tocoo()
            scores[torch.as_tensor(m.row, dtype=torch.int64),
                   torch.as_tensor(m.col, dtype=torch.int64)] = -torch.inf
            out.append(topk_items(scores, k).cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)
