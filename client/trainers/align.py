r"""FedCIA's alignment: pull a client's item table E towards the aggregated similarity.

The loss is ``||E E^T - S_bar||_F`` (the paper's unsquared norm) or its square, minimised by
full-batch gradient steps with weight decay. Gradients are analytic (one ``n x n`` product per
step on the matrix itself, instead of autograd's three). In dense mode the server sends
``S_bar`` as its eigendecomposition ``Q Lambda Q^T``, and the steps run on the coordinates
``X = Q^T E``, where ``S_bar`` is diagonal: ``O(n d^2)`` a step instead of ``O(n^2 d)``
(:func:`align_eigen`). In factored mode ``S_bar`` is given as ``A A^T`` (``A``: ``n x r``) and
no ``n x n`` matrix is ever formed:

.. math:: M E = E G - A B,\quad G = E^\top E,\ B = A^\top E,\quad
          \lVert M\rVert_F^2 = \lVert G\rVert_F^2 - 2\lVert B\rVert_F^2
          + \lVert A^\top A\rVert_F^2

Every step keeps ``E`` inside ``span(E_0) + span(A)`` (``E G`` lies in ``span(E)``, ``A B`` in
``span(A)``, weight decay scales), a space of dimension at most ``r + d``. So factored alignment
runs in the coordinates of an orthonormal basis ``[Q_A, P]`` of that space (``Q_A`` the left
singular vectors of ``A``, ``P`` from a QR of ``E_0``'s residual): ``E = [Q_A, P] X`` with ``X``
of size ``(r + d) x d`` and ``S_bar`` becomes ``diag(sigma^2)`` on the first ``r`` coordinates.
The steps are the same in exact arithmetic, cost ``O((r + d) d^2)`` instead of
``O(n d (d + r))``, and the clients of a node run as one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

TINY = 1e-12
#: below this share of ||S_bar||_F (float64 tables), M counts as 0
RELATIVE_ZERO = 1e-7


def _align(embs: list[torch.Tensor], apply_s: Callable[[torch.Tensor], torch.Tensor],
           s_norm_sq: float, steps: int, lr: float, weight_decay: float, squared: bool
           ) -> tuple[list[float], list[float]]:
    """Gradient steps for several clients at once, given ``E -> S E`` and ``||S_bar||_F^2``.

    The clients' tables are concatenated so that ``S E`` is one large product per step (the
    costly part); the rest is per client. Tables are updated in place.
    """
    k = len(embs)
    # the norm's expansion cancels: it is good to ~1e-8 relative in float64, ~3e-4 in float32
    relative_zero = RELATIVE_ZERO if embs[0].dtype == torch.float64 else 1e-3
    first, last = [float("nan")] * k, [float("nan")] * k
    active = list(range(k))
    zero = TINY + relative_zero * s_norm_sq**0.5
    for step in range(steps + 1):
        if not active:
            break
        se_all = apply_s(torch.cat([embs[i] for i in active], dim=1))
        parts = torch.split(se_all, [embs[i].shape[1] for i in active], dim=1)
        still = []
        for i, se in zip(active, parts, strict=True):
            emb = embs[i]
            gram = emb.T @ emb  # d x d, in the table's precision; the scalars sum in float64
            sq = float(gram.double().pow(2).sum()) \
                - 2 * float((emb * se).sum(dtype=torch.float64)) + s_norm_sq
            norm = max(sq, 0.0) ** 0.5
            first[i] = norm if step == 0 else first[i]
            last[i] = norm
            if step == steps or norm < zero:
                continue
            me = emb @ gram - se  # (M + M^T) E / 2
            grad = 4 * me if squared else 2 * me / norm
            emb -= lr * (grad + weight_decay * emb)
            still.append(i)
        active = still
    return first, last


def align_dense(embs: list[torch.Tensor], target: torch.Tensor, steps: int, lr: float,
                weight_decay: float = 0.0, squared: bool = False
                ) -> tuple[list[float], list[float]]:
    r"""Gradient steps on :math:`\lVert EE^\top - \bar S\rVert_F` (or its square), in place.

    The reference form, on the ``n x n`` matrix itself: nodes receive ``S_bar`` as its
    eigendecomposition and run the same steps in its eigenbasis (:func:`align_eigen`).

    The gradient of the norm is :math:`(M + M^\top)E / \lVert M\rVert_F` with
    :math:`M = EE^\top - \bar S`; of the square, :math:`2(M + M^\top)E`. Since
    :math:`(M + M^\top)E = 2(E E^\top E - S_{sym} E)` with :math:`S_{sym}` the symmetric part
    of :math:`\bar S`, a step costs one ``n x n`` product. A step is skipped
    where :math:`\lVert M\rVert_F` vanishes (below :math:`10^{-7}\lVert \bar S\rVert_F`,
    the precision of the expansion): the norm's gradient is undefined there.

    Returns
    -------
    (list of float, list of float)
        Per client, the norm before the first and after the last step.
    """
    target = target.to(embs[0].dtype)
    sym = (target + target.T) / 2
    s_norm_sq = float((target.double() ** 2).sum())
    return _align(embs, lambda e: sym @ e, s_norm_sq, steps, lr, weight_decay, squared)


def align_eigen(embs: list[torch.Tensor], basis: torch.Tensor, eigvals: torch.Tensor,
                steps: int, lr: float, weight_decay: float = 0.0, squared: bool = False,
                norm_sq: float | None = None) -> tuple[list[float], list[float]]:
    r"""The same steps as :func:`align_dense` with ``S_bar`` given by its eigendecomposition.

    .. math:: \bar S_{sym} = Q \Lambda Q^\top,\quad E = Q X,\quad
              X \leftarrow X - \eta\,(\nabla_X + \mu X),\quad
              (M + M^\top) E / 2 = Q\,(X X^\top X - \Lambda X)

    With ``Q`` (``n x n``, orthonormal columns) a basis of eigenvectors, the iteration runs on
    the coordinates ``X = Q^T E``, where ``S_bar`` is the diagonal ``Lambda``: a step costs
    ``O(n d^2)`` instead of the ``n x n`` product's ``O(n^2 d)``, and the basis is applied twice
    per call (in, and out for the steps' change only), batched over the clients. The norm expands as
    ``||G||^2 - 2 sum_i lambda_i ||x_i||^2 + ||S_bar||_F^2``, and a step is skipped below the
    same threshold as in :func:`align_dense`. Tables are written back in place.

    Parameters
    ----------
    embs : list of torch.Tensor
        The clients' ``n x d_k`` item tables.
    basis, eigvals : torch.Tensor
        ``Q`` (``n x n``) and ``Lambda`` (``n``) of the symmetric part of ``S_bar``
        (:func:`florec.strategies.fedcia.eigen_downlink`).
    steps, lr, weight_decay, squared
        As in :func:`align_dense`.
    norm_sq : float, optional
        ``||S_bar||_F^2``; by default ``sum_i lambda_i^2``, which it is for a symmetric
        ``S_bar`` (a non-symmetric one adds its antisymmetric part's square norm).

    Returns
    -------
    (list of float, list of float)
        Per client, the norm before the first and after the last step.
    """
    if basis.ndim != 2 or basis.shape[0] != basis.shape[1] or eigvals.shape != basis.shape[:1]:
        raise ValueError(f"a full eigenbasis is n x n with n eigenvalues; got a basis of shape "
                         f"{tuple(basis.shape)} and {tuple(eigvals.shape)} eigenvalues")
    dtype, widths = embs[0].dtype, [e.shape[1] for e in embs]
    q = basis.to(dtype)
    coords_all = q.T @ torch.cat(embs, dim=1)
    coords = torch.zeros(len(embs), q.shape[1], max(widths), dtype=dtype, device=q.device)
    col = 0
    for k, d in enumerate(widths):
        coords[k, :, :d] = coords_all[:, col:col + d]
        col += d
    scale = eigvals.to(dtype)[:, None]
    s_norm_sq = float((eigvals.double() ** 2).sum()) if norm_sq is None else norm_sq
    relative_zero = RELATIVE_ZERO if dtype == torch.float64 else 1e-3
    start = coords.clone()
    first, last = align_batched(coords, lambda x: scale * x, s_norm_sq, steps, lr,
                                weight_decay, squared, relative_zero)
    for emb, x, x0, d in zip(embs, coords, start, widths, strict=True):
        emb += q @ (x[:, :d] - x0[:, :d])  # only the steps' change: a table no step moved stays
    return first, last


def align_factored(embs: list[torch.Tensor], factor: torch.Tensor, steps: int, lr: float,
                   weight_decay: float = 0.0, squared: bool = False
                   ) -> tuple[list[float], list[float]]:
    """The same steps as :func:`align_dense` with ``S_bar = A A^T``, never forming ``n x n``.

    Runs in the ``(r + d)``-dimensional subspace that holds every iterate (module docstring;
    ``Q_A`` the left singular vectors of ``A``, so ``S_bar`` is diagonal there), in the tables'
    precision (the basis in float64), batched over the clients, and writes the tables back in
    place. Where ``r + d >= n`` the subspace is no smaller than the space itself and the steps
    run on the ``n x d`` tables. Scalars are computed in float64 and clamped at 0, since the
    expansion of the norm cancels when ``M`` is small; a step is skipped below the same
    threshold as in :func:`align_dense` for the tables' precision.
    """
    a64 = factor.double().to(embs[0].device)
    s_norm_sq = float(((a64.T @ a64) ** 2).sum())
    n, rank = factor.shape
    relative_zero = RELATIVE_ZERO if embs[0].dtype == torch.float64 else 1e-3
    if rank + max(e.shape[1] for e in embs) >= n:
        factor = factor.to(embs[0].dtype)
        return _align(embs, lambda e: factor @ (factor.T @ e), s_norm_sq, steps, lr,
                      weight_decay, squared)
    q_a, sigma, _ = torch.linalg.svd(a64, full_matrices=False)
    # S_bar in the coordinates of Q_A is diag(sigma^2): a step scales rows
    scale = torch.zeros(rank + max(e.shape[1] for e in embs), 1, dtype=embs[0].dtype,
                        device=q_a.device)
    scale[:rank, 0] = sigma**2
    coords, bases = to_subspace(embs, q_a)
    coords = coords.to(embs[0].dtype)
    first, last = align_batched(coords, lambda x: scale * x, s_norm_sq, steps, lr,
                                weight_decay, squared, relative_zero)
    for emb, x, p in zip(embs, coords.double(), bases, strict=True):
        d = emb.shape[1]
        emb.copy_((q_a @ x[:rank, :d] + p @ x[rank:rank + d, :d]).to(emb.dtype))
    return first, last


def to_subspace(embs: list[torch.Tensor], q_a: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Coordinates of each table in its basis ``[Q_A, P_k]``, zero-padded to one batch.

    ``P_k`` (``n x d_k``) is an orthonormal basis of the part of ``E_k`` outside ``span(Q_A)``
    (projected out twice: one Gram-Schmidt pass is not orthogonal to round-off). Returns the
    ``k x (r + d_max) x d_max`` coordinates (padding rows and columns are zero and stay zero
    under the steps) and the ``P_k``.
    """
    rank, widths = q_a.shape[1], [e.shape[1] for e in embs]
    whole = torch.cat([e.double().to(q_a.device) for e in embs], dim=1)
    inside = q_a.T @ whole
    outside = whole - q_a @ inside
    again = q_a.T @ outside
    outside -= q_a @ again
    inside += again
    dmax = max(widths)
    coords = torch.zeros(len(embs), rank + dmax, dmax, dtype=torch.float64,
                         device=q_a.device)
    bases, col = [], 0
    for k, d in enumerate(widths):
        p, r = torch.linalg.qr(outside[:, col:col + d])
        coords[k, :rank, :d] = inside[:, col:col + d]
        coords[k, rank:rank + d, :d] = r
        bases.append(p)
        col += d
    return coords, bases


def align_batched(xs: torch.Tensor, apply_s: Callable[[torch.Tensor], torch.Tensor],
                  s_norm_sq: float, steps: int, lr: float, weight_decay: float, squared: bool,
                  relative_zero: float = RELATIVE_ZERO) -> tuple[list[float], list[float]]:
    """:func:`_align`'s steps on a ``k x m x d`` batch of tables, updated in place.

    A client whose norm falls below the threshold stops for good, as in :func:`_align`; the
    scalars (norms) are summed in float64 whatever the tables' precision.
    """
    k = xs.shape[0]
    zero = TINY + relative_zero * s_norm_sq**0.5
    active = torch.ones(k, dtype=torch.bool, device=xs.device)
    first = torch.full((k,), float("nan"), dtype=torch.float64, device=xs.device)
    last = first.clone()
    for step in range(steps + 1):
        gram = xs.transpose(1, 2) @ xs
        se = apply_s(xs)
        sq = gram.double().pow(2).sum((1, 2)) \
            - 2 * (xs * se).sum((1, 2), dtype=torch.float64) + s_norm_sq
        norm = sq.clamp(min=0.0).sqrt()
        if step == 0:
            first = norm.clone()
        last = torch.where(active, norm, last)
        active &= norm >= zero
        if step == steps or not bool(active.any()):
            break
        me = xs @ gram - se
        grad = 4 * me if squared else \
            2 * me / norm.clamp(min=TINY).to(xs.dtype)[:, None, None]
        xs -= torch.where(active[:, None, None], lr * (grad + weight_decay * xs),
                          torch.zeros((), dtype=xs.dtype, device=xs.device))
    return first.tolist(), last.tolist()


def haar_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random ``d x d`` orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def similarity_upload(emb: np.ndarray, mode: str, noise_scale: float,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What a client uploads: ``E E^T`` (+ Laplace noise) in dense mode, ``E Q`` in factored."""
    emb = emb.astype(np.float64)
    if mode == "dense":
        gram = emb @ emb.T
        if noise_scale > 0:
            gram += rng.laplace(0.0, noise_scale, gram.shape)
        return {"gram": gram.astype(np.float32)}
    return {"factor": (emb @ haar_rotation(emb.shape[1], rng)).astype(np.float32)}
