"""FedCIA's factored server state: a bounded stack of the clients' similarity factors.

The factored server never forms the ``n x n`` similarity ``S_bar = B B^T / w``: it stacks the
uploaded factors ``B = [F_1, ..., F_K]`` and takes the top eigenpairs of the small ``B^T B``.
The stack is compressed exactly past ``n`` columns, or, where ``n`` float64 columns exceed
:data:`STACK_BUDGET_MB`, truncated to its top singular directions (a streaming sketch), so
server memory stays bounded whatever the number of clients (:mod:`florec.strategies.fedcia`).
"""

from __future__ import annotations

import numpy as np

from florec.models.gfcf import RANK_RTOL, top_eigh
from florec.recdata.errors import ConfigError

#: MiB of float64 factor stack the factored server keeps between compressions
STACK_BUDGET_MB = 256
#: rows per product when the stack multiplies its eigenvectors
ROW_CHUNK = 4096


class FactorStack:
    r"""``S = B B^T`` kept as a factor ``B`` (n x m), never as the ``n x n`` sum itself.

    Uploads ``F_k`` (n x d_k) are appended as columns. The top eigenpairs of ``S`` come from the
    small Gram ``C = B^T B`` (m x m): if ``C v = \lambda v`` then ``S (B v) = \lambda (B v)``
    and ``\lVert B v \rVert^2 = \lambda``, so the rank-r factor is ``A = B V_r`` with no
    division, and ``\lVert S \rVert_F = \lVert C \rVert_F``.

    The stack is compressed whenever it outgrows ``limit`` columns, so memory stays below
    ``n x (limit + d_k)`` float64 whatever the number of clients:

    - ``n`` columns fit in ``budget_mb``: ``limit = n`` and the compression is exact, to the
      ``n x n`` triangular factor ``R^T`` of a QR of ``B^T`` (``B B^T = R^T Q^T Q R``);
    - otherwise (large catalogues): ``limit`` is what fits in ``budget_mb`` and the compression
      keeps ``B V`` over the top ``limit // 2`` eigenpairs of ``C``, an incremental truncated
      SVD (a streaming low-rank sketch), stored in float32 as uploaded (``C``'s block
      products run in float32, stored in float64). The compressed block's columns are
      orthogonal, so its part of ``C`` is ``diag(lambda)`` and is not recomputed. The trace
      it drops (the discarded ``lambda``) is counted against the exact trace ``sum_k ||F_k||_F^2``
      (:attr:`trace_kept`).

    Parameters
    ----------
    n : int
        Rows (catalogue size).
    budget_mb : float, optional
        Bound on the float64 stack's size between compressions, MiB (default
        :data:`STACK_BUDGET_MB`).
    min_width : int
        The sketch must keep at least this many columns (the downlink rank).

    """

    def __init__(self, n: int, budget_mb: float | None = None, min_width: int = 1) -> None:
        self.n = n
        budget_mb = STACK_BUDGET_MB if budget_mb is None else budget_mb
        fit = budget_mb * 2**20 / (8 * n)  # float64 columns that fit (inf: no bound)
        self.limit, self.width = (n, n) if fit >= n else (int(fit), int(fit) // 2)
        # a sketch is approximate anyway: it stores float32 (as uploaded), halving its memory
        self.dtype = np.float64 if self.limit >= n else np.float32
        if self.width < min_width:
            raise ConfigError(
                f"fedcia-rank {min_width} does not fit the server's {budget_mb:g} MiB factor "
                f"stack for {n} items (at most {self.width}); lower fedcia-rank")
        self.blocks: list[np.ndarray] = []
        self.diag: np.ndarray | None = None  # C of blocks[0] once compressed
        self.cols = 0
        self.trace = 0.0
        self.dropped = 0.0

    @property
    def sketched(self) -> bool:
        """Whether compressions may drop eigenpairs (``limit < n``)."""
        return self.limit < self.n

    @property
    def trace_kept(self) -> float:
        """Share of ``trace(S)`` the stack still holds (1 unless the sketch dropped some)."""
        return 1.0 - self.dropped / self.trace if self.trace > 0 else 1.0

    def add(self, factor: np.ndarray) -> None:
        """Append one upload (n x d, already weighted by the node)."""
        block = np.asarray(factor, dtype=self.dtype)
        self.trace += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
        self.blocks.append(block)
        self.cols += block.shape[1]
        if self.cols > self.limit:
            self._compress(self.width)

    def gram(self) -> np.ndarray:
        """``C = B^T B`` (m x m), block by block (no copy of ``B``).

        Each block product runs in the stack's precision (float32 for a sketch, as uploaded)
        and is stored into the float64 ``C``.
        """
        widths = [b.shape[1] for b in self.blocks]
        edges = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        c = np.empty((self.cols, self.cols))
        for i, bi in enumerate(self.blocks):
            for j in range(i, len(self.blocks)):
                if i == j == 0 and self.diag is not None:
                    part = np.diag(self.diag)
                else:
                    part = bi.T @ self.blocks[j]
                c[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = part
                c[edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = part.T
        return c

    def times(self, vecs: np.ndarray) -> np.ndarray:
        """``B V`` (n x k) in the stack's precision, by blocks of rows (small temporaries)."""
        out = np.empty((self.n, vecs.shape[1]), dtype=self.dtype)
        edges = np.cumsum([0] + [b.shape[1] for b in self.blocks])
        for lo in range(0, self.n, ROW_CHUNK):
            hi = min(lo + ROW_CHUNK, self.n)
            out[lo:hi] = sum(b[lo:hi] @ vecs[edges[i]:edges[i + 1]]
                             for i, b in enumerate(self.blocks))
        return out

    def _compress(self, width: int) -> None:
        if width >= self.n:  # exact: B^T = Q R gives B B^T = R^T R, n columns (numpy: GIL-free)
            r = np.linalg.qr(self.stacked().T, mode="r")
            self.blocks, self.diag, self.cols = [np.ascontiguousarray(r.T)], None, r.shape[0]
            return
        vals, vecs = np.linalg.eigh(self.gram())  # ascending; numpy's eigh releases the GIL
        nonzero = np.flatnonzero(vals > RANK_RTOL * max(float(vals[-1]), 1e-300))
        keep = nonzero[-width:]
        self.dropped += float(vals[nonzero[:-width]].sum()) if len(nonzero) > width else 0.0
        self.blocks = [self.times(vecs[:, keep])]
        self.diag, self.cols = vals[keep], len(keep)

    def stacked(self) -> np.ndarray:
        """``B`` (n x m)."""
        return np.hstack(self.blocks) if self.blocks else np.zeros((self.n, 0))

    def top_factor(self, rank: int, scale: float = 1.0) -> tuple[np.ndarray, float]:
        r"""Rank-``r`` factor ``A`` of ``scale * B B^T`` and the share of its energy it keeps.

        .. math:: A = \sqrt{\text{scale}}\, B V_r,\quad
                  \text{energy} = \sum_{i \le r} \lambda_i^2 / \lVert B^\top B \rVert_F^2

        ``A`` has ``min(r, m)`` columns.
        """
        gram = self.gram()
        vals, vecs = top_eigh(gram, min(rank, self.cols))
        vals = np.clip(vals, 0.0, None)
        energy = float((vals**2).sum() / max((gram**2).sum(), 1e-300))
        return np.ascontiguousarray(np.sqrt(scale) * self.times(vecs)), energy
