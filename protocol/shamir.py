"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A secret ``s`` (an integer below 2^256) is the constant term of a random polynomial ``f`` of
degree ``t - 1`` over GF(p), ``p = 2^521 - 1`` (a Mersenne prime); share ``i`` is ``(i, f(i))``
for ``i = 1..n``. Any ``t`` shares give ``s = f(0)`` by Lagrange interpolation; fewer reveal
nothing about it (every value of ``s`` fits ``t - 1`` points equally well). Coefficients come
from :mod:`secrets`.

pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` (GF(2^128), 16-byte secrets) was used
first: its field multiplication is pure Python, and at 61 nodes sharing two 32-byte secrets took
0.7 s per node and rebuilding them 0.6 s per node at the server; Python integers do the same
here in milliseconds.
"""

from __future__ import annotations

import secrets

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

#: the field modulus, 2^521 - 1 (prime)
PRIME = 2**521 - 1
#: bytes of one encoded share value
SHARE_BYTES = 66


def split(secret: bytes, threshold: int, n: int) -> list[bytes]:
    """Shares of a secret of at most 32 bytes; share ``i`` (0-based) is for point ``i + 1``.

    Parameters
    ----------
    secret : bytes
        At most 32 bytes.
    threshold : int
        ``t``: shares needed to rebuild, 1 <= t <= n.
    n : int
        Number of shares.

    Returns
    -------
    list of bytes
        ``n`` values ``f(i)`` of :data:`SHARE_BYTES` bytes each.

    """
    if len(secret) > 32 or not 1 <= threshold <= n:
        raise ValueError(f"need a secret of <= 32 bytes and 1 <= threshold <= n (got "
                         f"{len(secret)} bytes, t={threshold}, n={n})")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME)
                                                 for _ in range(threshold - 1)]
    out = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out.append(y.to_bytes(SHARE_BYTES, "big"))
    return out


def combine(shares: dict[int, bytes], size: int = 32) -> bytes:
    r"""The secret from shares ``{point: value}``, as ``size`` bytes.

    Lagrange at 0 over GF(p): :math:`f(0) = \sum_i y_i \prod_{j \ne i} x_j / (x_j - x_i)`.

    Parameters
    ----------
    shares : dict of int to bytes
        At least ``t`` shares (more are fine; fewer give a wrong value).
    size : int
        Byte length of the secret.

    Returns
    -------
    bytes
        The secret.

    """
    points = {int(x): int.from_bytes(y, "big") for x, y in shares.items()}
    total = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    if total >= 2 ** (8 * size):
        raise ValueError("the shares do not rebuild a secret of this size (too few or altered)")
    return total.to_bytes(size, "big")
