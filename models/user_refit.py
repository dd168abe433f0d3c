"""Refit users' private MF embeddings against a frozen item table (the FCF / joint-DP view).

In federated MF every user embedding p_u stays on its node; only the item table (q, b) is
shared. With user sampling (a Poisson rate q per round, as user-level DP needs for its
amplification) most users train in only a few rounds, so their p_u was fitted to an item table
many rounds old, or never trained at all. Federated collaborative filtering (Ammad-ud-din et al.
2019) and joint differential privacy (Jain et al. 2021, "Private Alternating Least Squares")
instead derive every user's vector from the current shared item table on the user's own
device: a computation on the user's own data and a published (DP) table, so it costs no
privacy (post-processing) and nothing leaves the node. :func:`refit_user_emb` is that step for
BPR-trained MF: full-batch BPR on the user rows only, the items frozen.

Random streams are keyed by (seed, round, global user id), so a refit does not depend on how
users are grouped into nodes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from florec.recdata.sampling import sample_negatives
from florec.recdata.seeds import Salt, stream

EVAL, TRAIN = 0, 1  # phases: the refit before evaluating, the one before local training


def refit_negative_blocks(train: sp.csr_matrix, users: np.ndarray, steps: int, seed: int,
                          server_round: int, phase: int = EVAL,
                          max_draws: int = 1 << 22) -> Iterator[np.ndarray]:
    """One uniform unseen item per training pair and step, in blocks of steps.

    Each user's stream (seed, :attr:`Salt.USER_REFIT`, phase, round, global user id) draws its
    pairs' uniforms step after step, so the blocks concatenate to the same array whatever
    ``max_draws`` is; a block holds at most ``max_draws`` draws (at least one step), so memory
    stays bounded on a node with many interactions.

    Parameters
    ----------
    train : scipy.sparse.csr_matrix
        Binary (B, n_items) training interactions of the node's users, sorted indices.
    users : np.ndarray
        Global ids of the B rows (key the random streams).
    steps : int
        Number of refit steps.
    seed, server_round : int
        Run seed and the round whose training or evaluation the refit serves.
    phase : int
        :data:`EVAL` or :data:`TRAIN` (separate streams).
    max_draws : int
        Largest block, in draws (steps x pairs).

    Yields
    ------
    np.ndarray
        int64 arrays (steps in the block, nnz): the negative of pair k at each step (pairs in
        CSR order).

    """
    indptr = train.indptr
    rngs = {row: stream(seed, Salt.USER_REFIT, phase, server_round, int(uid))
            for row, uid in enumerate(users) if indptr[row + 1] > indptr[row]}
    rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(indptr))
    block = max(1, max_draws // max(train.nnz, 1))
    for first in range(0, steps, block):
        n = min(block, steps - first)
        uniforms = np.empty((n, train.nnz))
        for row, rng in rngs.items():
            lo, hi = indptr[row], indptr[row + 1]
            uniforms[:, lo:hi] = rng.random((n, hi - lo))
        yield np.stack([sample_negatives(rows, train, u) for u in uniforms])


def refit_negatives(train: sp.csr_matrix, users: np.ndarray, steps: int, seed: int,
                    server_round: int, phase: int = EVAL) -> np.ndarray:
    """All of :func:`refit_negative_blocks` as one int64 array (steps, nnz)."""
    blocks = list(refit_negative_blocks(train, users, steps, seed, server_round, phase))
    return np.concatenate(blocks) if blocks else np.zeros((0, train.nnz), np.int64)


def refit_user_emb(train: sp.csr_matrix, users: np.ndarray, user_emb: np.ndarray,
                   item_emb: np.ndarray, item_bias: np.ndarray, steps: int, lr: float,
                   reg: float = 0.0, seed: int = 0, server_round: int = 0,
                   phase: int = EVAL) -> np.ndarray:
    r"""Users' embeddings refitted by full-batch BPR against a frozen item table.

    Each user u (training items :math:`I_u`) minimises, over :math:`p_u` only,

    .. math:: L_u(p_u) = \frac{1}{|I_u|} \sum_{i \in I_u}
              -\log\sigma\big(p_u^\top (q_i - q_j) + b_i - b_j\big) + \lambda \lVert p_u\rVert^2

    with a fresh uniform negative :math:`j \notin I_u` per pair and step, by ``steps`` Adam
    steps of size ``lr`` from ``user_emb`` (a warm start). The gradient is closed-form,

    .. math:: \nabla_{p_u} L_u = -\frac{1}{|I_u|} \sum_{i \in I_u} \sigma(-x_{uij})\,
              (q_i - q_j) + 2 \lambda p_u,

    summed per user by one sparse product. The objective is a sum of per-user terms and Adam
    acts elementwise, so one Adam over the matrix equals every user running their own. Users
    without training pairs keep their row.

    Parameters
    ----------
    train : scipy.sparse.csr_matrix
        Binary (B, n_items) training interactions of the users, sorted indices.
    users : np.ndarray
        Their global ids (random streams).
    user_emb : np.ndarray
        (B, d) starting embeddings.
    item_emb, item_bias : np.ndarray
        The shared item table (n_items, d) and biases (n_items,), not changed.
    steps : int
        Adam steps (0 returns ``user_emb`` unchanged).
    lr : float
        Adam step size.
    reg : float
        :math:`\lambda`, L2 on the user rows.
    seed, server_round, phase : int
        Key of the negatives' random streams (:func:`refit_negative_blocks`).

    Returns
    -------
    np.ndarray
        (B, d) float32 refitted embeddings.

    """
    if train.shape[0] != len(user_emb) or len(users) != len(user_emb):
        raise ValueError(f"refit: {train.shape[0]} training rows, {len(users)} user ids and "
                         f"{len(user_emb)} embeddings; pass the same users to all three")
    if steps <= 0 or train.nnz == 0:
        return np.asarray(user_emb, np.float32).copy()
    train = train.tocsr()
    train.sort_indices()
    negatives = (step for block in refit_negative_blocks(train, users, steps, seed,
                                                         server_round, phase) for step in block)
    indptr, nnz = train.indptr, train.nnz
    rows = np.repeat(np.arange(train.shape[0]), np.diff(indptr))
    pos = train.indices.astype(np.int64)
    weight = (1.0 / np.maximum(np.diff(indptr), 1))[rows].astype(np.float32)
    q = np.asarray(item_emb, np.float32)
    b = np.asarray(item_bias, np.float32).reshape(-1)
    p = np.array(user_emb, np.float32)
    adam = _Adam(p.shape, lr)
    active = (np.diff(indptr) > 0)[:, None]  # users without pairs keep their row
    q_pos, b_pos = q[pos], b[pos]
    for neg in negatives:
        diff = q_pos - q[neg]
        x = np.einsum("kd,kd->k", p[rows], diff) + b_pos - b[neg]
        dx = -weight * _sigmoid(-x)  # dL/dx of -w log sigma(x)
        per_user = sp.csr_matrix((dx, np.arange(nnz), indptr), shape=(len(p), nnz))
        adam.step(p, (per_user @ diff + 2.0 * reg * p) * active)
    return p


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, computed without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


class _Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` with its defaults, on one array."""

    def __init__(self, shape: tuple[int, ...], lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps, self.t = lr, beta1, beta2, eps, 0
        self.m = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        """One in-place update of ``param`` by ``grad``."""
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        param -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)
