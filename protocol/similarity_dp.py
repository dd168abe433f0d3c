r"""The node's half of user-level DP for FedCIA's dense similarity uploads: the Frobenius clip.

A FedCIA client ``k`` uploads its item-item similarity :math:`S_k = E_k E_k^\top` (``n x n``).
For a calibrated Gaussian mechanism each upload must have bounded norm: the client scales its
item table before forming the upload,

.. math:: \tilde E_k = E_k \sqrt{\min\big(1, C / \lVert E_k E_k^\top \rVert_F\big)}, \qquad
          \lVert \tilde E_k \tilde E_k^\top \rVert_F
          = \min\big(\lVert E_k E_k^\top \rVert_F, C\big) \le C,

so the uploaded :math:`\tilde S_k = \min(1, C / \lVert S_k \rVert_F)\, S_k` is :math:`S_k`
clipped to Frobenius norm ``C``. :math:`\lVert E E^\top \rVert_F = \lVert E^\top E \rVert_F`,
so the norm costs a ``d x d`` product, not ``n x n``. Only the upload is scaled: the client's
private model keeps its table.

Adding or removing one user changes that user's client's clipped upload from one matrix of norm
at most ``C`` to another, and no other client's upload of the round (they depend on the user
only through earlier released averages, which adaptive composition covers): the round's sum
moves by at most :data:`SENSITIVITY_FACTOR` ``* C`` in Frobenius norm. The server's noise and
accountant are in :mod:`florec.strategies.fedcia_dp`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SENSITIVITY_FACTOR", "clip_similarity", "similarity_norm"]

#: L2 sensitivity of the round's sum in units of the clip: a user's client swaps one upload of
#: norm <= C for another (2 C); a client that leaves with its only user removes <= C.
SENSITIVITY_FACTOR = 2.0


def similarity_norm(emb: np.ndarray) -> float:
    r"""``||E E^T||_F``, computed as ``||E^T E||_F`` (a ``d x d`` product).

    Parameters
    ----------
    emb : np.ndarray
        A client's item table ``E`` (``n x d``).

    Returns
    -------
    float
        The Frobenius norm of the client's similarity :math:`E E^\top`.

    """
    e = np.asarray(emb, dtype=np.float64)
    return float(np.linalg.norm(e.T @ e))


def clip_similarity(emb: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    r"""Scale ``E`` so that its similarity :math:`E E^\top` has Frobenius norm at most ``clip``.

    .. math:: \tilde E = E \sqrt{\min(1, C / \lVert E E^\top \rVert_F)}

    Parameters
    ----------
    emb : np.ndarray
        The client's item table ``E`` (``n x d``), already weighted.
    clip : float
        ``C`` > 0 (``dp-clip``).

    Returns
    -------
    (np.ndarray, float)
        The scaled table (same dtype) and the norm of the similarity before clipping.

    Raises
    ------
    ValueError
        If ``clip`` is not positive.

    """
    if clip <= 0:
        raise ValueError(f"dp-clip must be positive, got {clip}; set dp-clip > 0")
    norm = similarity_norm(emb)
    if norm <= clip:
        return emb, norm
    return (emb * np.sqrt(clip / norm)).astype(emb.dtype, copy=False), norm
