r"""GF-CF (Shen et al., CIKM 2021) and its federated forms (fedcia.md section 3).

Notation: ``R`` is the binary user x item train matrix, ``D_u``/``D_i`` its user/item degree
diagonals (zero degree -> zero inverse), and

.. math:: \tilde R = D_u^{-1/2} R D_i^{-1/2}, \qquad
          F = \tilde R^\top \tilde R + w_p\, D_i^{-1/2} V_s^\top V_s D_i^{+1/2},
          \qquad \hat S = R F,

where ``V_s`` (s x n) holds the top-s right singular vectors of ``R~`` as rows (fewer when the
rank of ``R~`` is below s, see :data:`RANK_RTOL`).

Exact federated GF-CF: with ``R = [R_1; ...; R_K]`` (each user on one client),

.. math:: \tilde R^\top\tilde R = D_i^{-1/2}\Big(\sum_k R_k^\top D_{u,k}^{-1} R_k\Big)D_i^{-1/2},
          \qquad D_i = \sum_k D_{i,k},

so clients upload ``H_k`` and their item degrees (:func:`client_gram`), the server sums both and
calls :func:`filter_from_sums`, exactly as :meth:`GFCF.fit` does centrally.
FedCIA-GSP: each client builds its own filter from local degrees (:func:`local_filter`); the
server averages them; client scores are ``agg_p R_k mean_k(F_k) + R_k F_k`` (:func:`gsp_scores`).

All filter math is float64. Only pure numpy/scipy here; no Flower.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from florec.models.base import Recommender

#: Singular directions with ``sigma^2 <= RANK_RTOL * sigma_max^2`` count as null space and are
#: dropped, so ``V_s`` never carries arbitrary null-space rows (fedcia.md pitfall 7).
RANK_RTOL = 1e-10
_CHUNK = 512
#: :func:`top_eigh` uses Lanczos (ARPACK) from this size on, when fewer than a quarter of the
#: eigenpairs are asked for; below, or for more, a full ``numpy.linalg.eigh``.
LANCZOS_MIN_N = 2000


def _inv_sqrt(deg: np.ndarray) -> np.ndarray:
    """``deg^-1/2`` with 0 where ``deg == 0``."""
    out = np.zeros_like(deg, dtype=np.float64)
    np.divide(1.0, np.sqrt(deg), out=out, where=deg > 0)
    return out


def _truncate(sq_vals: np.ndarray, vecs: np.ndarray, s: int) -> np.ndarray:
    """Top-s directions of positive ``sq_vals`` (descending), sign-fixed, as rows (k x n).

    ``vecs`` holds one direction per row. Each kept row is flipped so that its entry of largest
    magnitude is positive, which makes ``V_s`` deterministic (``F`` does not depend on signs).
    """
    order = np.argsort(-sq_vals, kind="stable")[:s]
    top = sq_vals[order[0]] if len(order) else 0.0
    order = order[sq_vals[order] > RANK_RTOL * top] if top > 0 else order[:0]
    v = vecs[order]
    signs = np.sign(v[np.arange(len(v)), np.abs(v).argmax(axis=1)]) if len(v) else np.ones(0)
    return v * signs[:, None]


def top_eigh(sym: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""The ``k`` largest eigenpairs of a symmetric matrix, without holding the GIL for long.

    .. math:: S v_j = \lambda_j v_j,\quad \lambda_1 \ge \dots \ge \lambda_k

    A long call that holds Python's GIL starves every other thread of the process: in a Flower
    ServerApp that is the heartbeat thread, and the SuperLink then fails the run ("No heartbeat
    received"). SciPy's LAPACK wrappers (``scipy.linalg.eigh``) hold the GIL for the whole
    solve; ``numpy.linalg.eigh`` releases it, and so does ARPACK's Lanczos
    (``scipy.sparse.linalg.eigsh``, which returns to Python for every product). Lanczos runs to
    machine precision (``tol=0``) from a seeded start vector, so results are reproducible.

    Parameters
    ----------
    sym : numpy.ndarray
        Symmetric matrix (n x n).
    k : int
        Number of eigenpairs (clipped to ``n``).
    seed : int
        Seed of Lanczos' start vector.

    Returns
    -------
    tuple of numpy.ndarray
        Eigenvalues (descending, length k) and eigenvectors as columns (n x k).

    """
    n = sym.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0), np.zeros((n, 0))
    if n < LANCZOS_MIN_N or 4 * k >= n:
        vals, vecs = np.linalg.eigh(sym)
        vals, vecs = vals[n - k:], vecs[:, n - k:]
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        vals, vecs = spl.eigsh(sym, k=k, which="LA", tol=0, v0=v0)
    order = np.argsort(-vals, kind="stable")
    return vals[order], vecs[:, order]


def top_eigvecs(gram: np.ndarray, s: int) -> np.ndarray:
    r"""Top-s eigenvectors (rows, descending eigenvalue) of a PSD matrix, truncated to its rank.

    For ``gram = R~^T R~`` these are the top-s right singular vectors of ``R~``
    (:math:`\lambda = \sigma^2`). GIL-free (:func:`top_eigh`): a federated server calls it.
    """
    vals, vecs = top_eigh(gram, s)
    return _truncate(vals, vecs.T, len(vals))


def top_right_singular(mat: np.ndarray, s: int) -> np.ndarray:
    """Top-s right singular vectors (rows) of a dense matrix, truncated to its rank."""
    if min(mat.shape) == 0 or s <= 0:
        return np.zeros((0, mat.shape[1]))
    _, sig, vt = np.linalg.svd(mat, full_matrices=False)
    return _truncate(sig**2, vt, s)


def client_gram(r_k: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    r"""A client's upload for exact federated GF-CF.

    .. math:: H_k = R_k^\top D_{u,k}^{-1} R_k \;(n\times n), \qquad d_k = R_k^\top \mathbf 1

    Parameters
    ----------
    r_k : scipy.sparse matrix
        The client's (users x items) train rows.

    Returns
    -------
    tuple of numpy.ndarray
        Dense float64 ``H_k`` and the item-degree vector ``d_k`` (float64, length n).

    """
    r = sp.csr_matrix(r_k, dtype=np.float64)
    user_deg = np.asarray(r.sum(axis=1)).ravel()
    inv = np.zeros_like(user_deg)
    np.divide(1.0, user_deg, out=inv, where=user_deg > 0)
    h = (r.T @ sp.diags(inv) @ r).toarray()
    return h, np.asarray(r.sum(axis=0), dtype=np.float64).ravel()


def _normalised_gram(h_sum: np.ndarray, item_degree: np.ndarray) -> tuple[np.ndarray, ...]:
    """``G = D_i^-1/2 H D_i^-1/2`` (new array), with ``D_i^-1/2`` and ``D_i^+1/2``."""
    deg = np.asarray(item_degree, dtype=np.float64)
    inv = _inv_sqrt(deg)
    gram = np.multiply(np.asarray(h_sum, dtype=np.float64), inv[:, None])
    gram *= inv[None, :]
    return gram, inv, np.sqrt(np.maximum(deg, 0.0))


def _add_ideal(gram: np.ndarray, v: np.ndarray, inv: np.ndarray, sq: np.ndarray,
               wp: float) -> np.ndarray:
    """``gram += wp * D_i^-1/2 V^T V D_i^+1/2`` in place, by row blocks (one dense n x n)."""
    vs = v * sq[None, :]
    for r0 in range(0, gram.shape[0], _CHUNK):
        rows = slice(r0, r0 + _CHUNK)
        gram[rows] += (wp * inv[rows, None]) * (v[:, rows].T @ vs)
    return gram


def filter_from_sums(h_sum: np.ndarray, item_degree: np.ndarray, s: int, wp: float) -> np.ndarray:
    r"""GF-CF filter from (summed) client Grams; used by central fit and the federated server.

    .. math:: G = D_i^{-1/2} H D_i^{-1/2} = \tilde R^\top\tilde R, \qquad
              F = G + w_p D_i^{-1/2} V_s^\top V_s D_i^{+1/2}

    with ``V_s`` the top-s eigenvectors of ``G`` (rank-truncated, :func:`top_eigvecs`).

    Parameters
    ----------
    h_sum : numpy.ndarray
        ``sum_k H_k`` (n x n), see :func:`client_gram`.
    item_degree : numpy.ndarray
        ``sum_k d_k``: global item degrees.
    s : int
        Number of singular directions of the ideal low-pass part.
    wp : float
        Weight of the ideal low-pass part.

    Returns
    -------
    numpy.ndarray
        The dense float64 filter ``F`` (n x n).

    """
    gram, inv, sq = _normalised_gram(h_sum, item_degree)
    v = top_eigvecs(gram, s)
    return _add_ideal(gram, v, inv, sq, wp)


def local_filter(r_k: sp.spmatrix, s: int, wp: float) -> np.ndarray:
    r"""FedCIA-GSP client filter ``F_k``: GF-CF with degrees computed inside the client.

    .. math:: \tilde R_k = D_{u,k}^{-1/2} R_k D_{i,k}^{-1/2}, \qquad
              F_k = \tilde R_k^\top\tilde R_k + w_p D_{i,k}^{-1/2} V_s^\top V_s D_{i,k}^{+1/2}

    ``V_s``: top-s right singular vectors of ``R~_k``, truncated to its rank (a client with fewer
    users than s gets fewer rows, never null-space ones). A thin SVD of the dense ``R~_k`` is used
    when the client has fewer users than items, the eigenvectors of ``R~_k^T R~_k`` otherwise.
    """
    r = sp.csr_matrix(r_k, dtype=np.float64)
    h, deg = client_gram(r)
    gram, inv, sq = _normalised_gram(h, deg)
    if r.shape[0] < r.shape[1]:
        r_norm = (sp.diags(_inv_sqrt(np.asarray(r.sum(axis=1)).ravel())) @ r).toarray() * inv
        v = top_right_singular(r_norm, s)
    else:
        v = top_eigvecs(gram, s)
    return _add_ideal(gram, v, inv, sq, wp)


def gsp_scores(r_k: sp.spmatrix, f_local: np.ndarray, f_mean: np.ndarray,
               agg_p: float) -> np.ndarray:
    r"""FedCIA-GSP client scores :math:`agg_p R_k \bar F + R_k F_k` (dense, float64).

    Equal (up to round-off) to ``R_k @ (agg_p * f_mean + f_local)``, so a :class:`GFCF` fitted
    with ``item_filter=agg_p * f_mean + f_local`` serves the same ranking.
    """
    r = sp.csr_matrix(r_k, dtype=np.float64)
    return agg_p * (r @ f_mean) + r @ f_local


class GFCF(Recommender):
    """Non-trainable GF-CF: ``score(users) = R[users] @ F``.

    Parameters
    ----------
    n_users, n_items : int
        Shape of the train matrix passed to :meth:`fit`.
    s : int
        Singular directions of the ideal low-pass part (truncated to the rank).
    wp : float
        Weight of the ideal low-pass part.

    Notes
    -----
    The filter is the buffer ``item_filter`` (float64, n x n): shared state, since it is what an
    exact federated server broadcasts. The train rows are private and live outside the state
    dict.

    """

    def __init__(self, n_users: int, n_items: int, s: int = 32, wp: float = 0.3) -> None:
        super().__init__()
        self.n_users, self.n_items, self.s, self.wp = n_users, n_items, s, wp
        self.register_buffer("item_filter", torch.zeros(n_items, n_items, dtype=torch.float64))
        self._train: sp.csr_matrix | None = None

    def fit(self, train: sp.spmatrix, item_filter: np.ndarray | None = None) -> GFCF:
        """Remember the train rows and build the filter from them (central / local GF-CF).

        With ``item_filter`` given (exact federated mode: the server's filter, or a GSP blend),
        only the rows are stored and that filter is used as is.
        """
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(f"train has shape {train.shape}, expected "
                             f"{(self.n_users, self.n_items)}")
        self._train = sp.csr_matrix(train, dtype=np.float64)
        if item_filter is None:
            item_filter = filter_from_sums(*client_gram(self._train), self.s, self.wp)
        self.item_filter.copy_(torch.as_tensor(item_filter, dtype=torch.float64))
        return self

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``R[users] @ F`` (float64), shape (len(users), n_items)."""
        if self._train is None:
            raise RuntimeError("GFCF has no train rows: call fit(train_csr) first")
        rows = self._train[np.asarray(users.detach().cpu(), dtype=np.int64)]
        f = self.item_filter.detach().cpu().numpy()
        return torch.from_numpy(np.asarray(rows @ f)).to(self.item_filter.device)
