r"""FedCIA's alignment: pull a client's item table E towards the aggregated similarity.

The loss is ``||E E^T - S_bar||_F`` (the paper's unsquared norm) or its square, minimised by
full-batch gradient steps with weight decay. Gradients are analytic (one ``n x n`` product per
step in dense mode, instead of autograd's three). In factored mode ``S_bar`` is given as
``A A^T`` (``A``: ``n x r``) and no ``n x n`` matrix is ever formed:

.. math:: M E = E G - A B,\quad G = E^\top E,\ B = A^\top E,\quad
          \lVert M\rVert_F^2 = \lVert G\rVert_F^2 - 2\lVert B\rVert_F^2
          + \lVert A^\top A\rVert_F^2
"""

from __future__ import annotations

import numpy as np
import torch

TINY = 1e-12


def align_dense(emb: torch.Tensor, target: torch.Tensor, steps: int, lr: float,
                weight_decay: float = 0.0, squared: bool = False) -> tuple[float, float]:
    r"""Gradient steps on :math:`\lVert EE^\top - \bar S\rVert_F` (or its square), in place.

    The gradient of the norm is :math:`(M + M^\top)E / \lVert M\rVert_F` with
    :math:`M = EE^\top - \bar S`; of the square, :math:`2(M + M^\top)E`. A step is skipped where
    :math:`\lVert M\rVert_F < 10^{-12}` (the norm's gradient is undefined there).

    Returns
    -------
    (float, float)
        The norm before the first and after the last step.
    """
    first = last = float("nan")
    for step in range(steps + 1):
        m = emb @ emb.T - target
        norm = float(torch.linalg.matrix_norm(m))
        first = norm if step == 0 else first
        last = norm
        if step == steps or norm < TINY:
            break
        grad = (m + m.T) @ emb
        grad = 2 * grad if squared else grad / norm
        emb -= lr * (grad + weight_decay * emb)
    return first, last


def align_factored(emb: torch.Tensor, factor: torch.Tensor, steps: int, lr: float,
                   weight_decay: float = 0.0, squared: bool = False) -> tuple[float, float]:
    """The same steps as :func:`align_dense` with ``S_bar = A A^T``, never forming ``n x n``.

    Scalars are computed in float64 and clamped at 0, since the expansion of the norm cancels
    when ``M`` is small.
    """
    a64 = factor.double()
    ata = float(torch.linalg.matrix_norm(a64.T @ a64) ** 2)
    first = last = float("nan")
    for step in range(steps + 1):
        e64 = emb.double()
        gram, cross = e64.T @ e64, factor.T.double() @ e64
        sq = float(torch.linalg.matrix_norm(gram) ** 2) - 2 * float(
            torch.linalg.matrix_norm(cross) ** 2) + ata
        norm = max(sq, 0.0) ** 0.5
        first = norm if step == 0 else first
        last = norm
        if step == steps or norm < TINY:
            break
        me = (e64 @ gram - a64 @ cross).to(emb.dtype)
        grad = 4 * me if squared else 2 * me / norm
        emb -= lr * (grad + weight_decay * emb)
    return first, last


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
