"""Fixed-point codes for a secure sum: floats in ``[-R, R]`` as integers mod ``2^32``.

The codes of ``n`` nodes sum without wrapping, so the masked sum of
:mod:`florec.protocol.secagg` (and :mod:`florec.protocol.secagg_wire`) decodes to the float sum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MODULUS_BITS", "dequantize", "quant_bits", "quantize"]

MODULUS_BITS = 32


def quant_bits(n_nodes: int) -> int:
    """Bits per quantised entry so that ``n_nodes`` entries of ``2^bits - 1`` sum below 2^32."""
    return MODULUS_BITS - int(np.ceil(np.log2(max(n_nodes, 1) + 1)))


def quantize(x: np.ndarray, clip: float, n_nodes: int) -> tuple[np.ndarray, int]:
    r"""Fixed-point code of ``x`` for a secure sum of ``n_nodes`` vectors.

    :math:`q = \mathrm{round}((\mathrm{clip}(x, -R, R) + R) (2^k - 1) / 2R)` with
    :math:`k` = :func:`quant_bits`, so the sum of ``n_nodes`` codes never wraps mod 2^32 and
    each entry's rounding error is at most :math:`R / (2^k - 1)`.

    Returns
    -------
    (np.ndarray, int)
        uint32 codes and the number of entries that were clipped to ``[-R, R]``.

    """
    levels = 2 ** quant_bits(n_nodes) - 1
    x = np.asarray(x, np.float64).ravel()
    clipped = int((np.abs(x) > clip).sum())
    code = np.rint((np.clip(x, -clip, clip) + clip) * (levels / (2 * clip)))
    return code.astype(np.uint32), clipped


def dequantize(total: np.ndarray, clip: float, n_nodes: int, n_summed: int) -> np.ndarray:
    """The float sum of ``n_summed`` vectors from the sum of their codes (see :func:`quantize`)."""
    levels = 2 ** quant_bits(n_nodes) - 1
    return np.asarray(total, np.float64) * (2 * clip / levels) - n_summed * clip
