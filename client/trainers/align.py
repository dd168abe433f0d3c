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


def align_factored(embs: list[torch.Tensor], factor: torch.Tensor, steps: int, lr: float,
                   weight_decay: float = 0.0, squared: bool = False
                   ) -> tuple[list[float], list[float]]:
    """The same steps as :func:`align_dense` with ``S_bar = A A^T``, never forming ``n x n``.

    Scalars are computed in float64 and clamped at 0, since the expansion of the norm cancels
    when ``M`` is small.
    """
    factor = factor.to(embs[0].dtype)
    a64 = factor.double()
    s_norm_sq = float(((a64.T @ a64) ** 2).sum())
    return _align(embs, lambda e: factor @ (factor.T @ e), s_norm_sq, steps, lr, weight_decay,
                  squared)


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
