"""FedCIA: clients share item-item similarity, never embeddings (Han et al., SIGIR 2025).

Each round the sampled clients train locally and upload their similarity ``S_k = E_k E_k^T``;
the server keeps one running sum (an ``n x n`` array in dense mode, a bounded factor stack in
factored mode, whatever the number of clients), forms
``S_bar = sum_k w_k S_k / sum_k w_k`` and sends it back in a second message (``train.align``)
so every client pulls its own item table towards it. Two communication modes:

- ``dense``: the paper's protocol, ``n x n`` up and down.
- ``factored``: a client uploads ``E_k Q_k`` (``n x d``, a fresh random rotation ``Q_k``), which
  determines ``S_k`` exactly; the server sends a rank-``r`` factor ``A`` of ``S_bar``
  (top-``r`` eigenpairs, ``A = U_r Lambda_r^{1/2}``) and clients align without forming ``n x n``.
  ``r = n`` reproduces ``dense``. The server never forms ``S_bar`` either: it stacks the factors
  ``B = [F_1, ..., F_K]`` (``S_bar = B B^T / w``) and takes the top eigenpairs of the small
  ``B^T B`` (:class:`FactorStack`); the stack is compressed exactly past ``n`` columns, or, on
  catalogues where ``n`` float64 columns exceed :data:`STACK_BUDGET_MB`, truncated to its top
  singular directions (a streaming sketch) so server memory stays bounded.

Dense mode keeps ``n x n`` float64 on the server and refuses catalogues past
:data:`DENSE_LIMIT_BYTES` (Book-Crossing's 19,997 items would need 6.4 GB).

Every solve is GIL-free (:func:`florec.models.gfcf.top_eigh`): a call that holds the GIL for
long starves the ServerApp's heartbeat thread and the SuperLink fails the run.

:class:`LocalOnly` is the no-communication lower baseline that runs the same client trainer.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models.gfcf import RANK_RTOL, top_eigh
from florec.protocol.codec import from_record, to_record
from florec.recdata.errors import ConfigError
from florec.strategies.base import RecStrategy
from florec.strategies.fedcia_dp import SimilarityDP
from florec.strategies.payload import check_reply, record_nbytes

ALIGN = f"{MessageType.TRAIN}.align"
COMM_MODES = ("dense", "factored")
#: MiB of float64 factor stack the factored server keeps between compressions
STACK_BUDGET_MB = 256
#: rows per product when the stack multiplies its eigenvectors
ROW_CHUNK = 4096
#: dense mode refuses catalogues whose n x n server state (16 n^2 bytes) exceeds this
DENSE_LIMIT_BYTES = 2 * 2**30


def top_factor(s_bar: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    r"""Rank-``r`` factor of a symmetric matrix and the share of its energy it keeps.

    .. math:: A = U_r \Lambda_r^{1/2},\quad
              \text{energy} = \sum_{i \le r} \lambda_i^2 / \lVert \bar S \rVert_F^2

    Negative eigenvalues (from noise) are clipped to 0.
    """
    vals, vecs = top_eigh(s_bar, min(rank, s_bar.shape[0]))
    vals = np.clip(vals, 0.0, None)
    energy = float((vals**2).sum() / max((s_bar**2).sum(), 1e-300))
    return np.ascontiguousarray(vecs * np.sqrt(vals)), energy


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


class FedCIA(RecStrategy):
    """Similarity aggregation with a streaming sum.

    Parameters
    ----------
    n_items : int
        Catalogue size ``n``.
    comm : {"dense", "factored"}
        Communication mode.
    rank : int
        Rank ``r`` of the factored downlink.
    weighting : {"uniform", "interactions"}
        Uniform mean (the paper) or weights by training interactions; nodes apply the weights
        and report their total as ``weight``.
    fraction_train, seed
        See :class:`florec.strategies.base.RecStrategy`.
    stack_mb : float, optional
        Factored mode: the server's factor-stack budget, MiB (:class:`FactorStack`).

    Raises
    ------
    ConfigError
        Dense mode on a catalogue whose ``n x n`` server state would exceed
        :data:`DENSE_LIMIT_BYTES`; a factored rank the stack's budget cannot keep.

    """

    def __init__(self, n_items: int, comm: str = "dense", rank: int = 128,
                 weighting: str = "uniform", fraction_train: float = 1.0, seed: int = 0,
                 stack_mb: float | None = None) -> None:
        if comm not in COMM_MODES:
            raise ValueError(f"fedcia-comm '{comm}' is unknown; choose one of {COMM_MODES}")
        if comm == "dense" and 16 * n_items**2 > DENSE_LIMIT_BYTES:
            gb = 16 * n_items**2 / 1e9
            raise ConfigError(f"fedcia-comm='dense' keeps n x n matrices on the server ({gb:.1f} "
                              f"GB for {n_items} items); use fedcia-comm='factored'")
        super().__init__(fraction_train, seed)
        self.n, self.comm, self.rank, self.weighting = n_items, comm, rank, weighting
        self.stack_mb = stack_mb
        if comm == "factored":
            FactorStack(n_items, stack_mb, min(rank, n_items))  # refuses a rank it cannot keep
        self.downlink: dict[str, np.ndarray] | None = None
        self.dp: SimilarityDP | None = None  # user-level DP (set by the registry when dp=true)

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedCIA: comm=%s rank=%d weighting=%s", self.comm, self.rank,
            self.weighting)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Ask the sampled clients to train locally and upload their similarity."""
        return self.train_messages(server_round, ArrayRecord(), config, grid, upload=self.comm)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold each upload into a running sum (``n x n`` or a factor stack); build the downlink."""
        dense = self.comm == "dense"
        total = np.zeros((self.n, self.n)) if dense else \
            FactorStack(self.n, self.stack_mb, min(self.rank, self.n))
        weight, accepted, loss, clients = 0.0, 0, 0.0, 0
        key, expected = ("gram", (self.n, self.n)) if dense else ("factor", None)
        for msg in replies:
            problem = check_reply(msg, {key: expected})
            up = None if problem else from_record(msg.content.array_records["arrays"])[key]
            if up is not None and not dense and (up.ndim != 2 or up.shape[0] != self.n):
                problem = f"factor has shape {up.shape}, expected ({self.n}, d)"
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            metrics = msg.content.metric_records.get("metrics", {})
            if dense:
                total += up  # already weighted on the node
            else:
                total.add(up)
            weight += float(metrics.get("weight", 1.0))
            loss += float(metrics.get("train-loss", 0.0))
            clients += int(metrics.get("clients", 1))
            accepted += 1
        if accepted == 0 or weight == 0:
            self.downlink = None
            return None, None
        out = {"num-replies": accepted, "clients": clients, "train-loss": loss / accepted}
        if dense:
            if self.dp is not None:  # noise on the sum of clipped uploads (fedcia_dp.py)
                total = self.dp.privatize(total)
                out.update(self.dp.round_metrics(server_round))
            self.downlink = {"gram": (total / weight).astype(np.float32)}
        else:
            factor, energy = total.top_factor(self.rank, 1.0 / weight)
            self.downlink = {"factor": factor.astype(np.float32)}
            out["captured-energy"] = energy
            if total.sketched:
                out["sketch-trace-kept"] = total.trace_kept
        return ArrayRecord(), MetricRecord(out)

    def discard_round(self) -> None:
        """No alignment after a discarded round."""
        self.downlink = None

    def after_rounds(self, grid: Grid, run: dict, out_dir: object = None) -> dict:
        """Run fields added at the end: the DP accountant's summary (``dp``) if DP is on."""
        return self.dp.summary(int(run.get("rounds", 0))) if self.dp is not None else {}

    def configure_align(self, server_round: int, grid: Grid) -> Iterable[Message]:
        """Send ``S_bar`` (or its factor) to every responsive client for alignment."""
        if self.downlink is None:
            return []
        record = RecordDict({"arrays": to_record(self.downlink),
                             "config": ConfigRecord({"server-round": server_round})})
        return self.messages(record, self.responsive_nodes(grid), ALIGN)


class LocalOnly(RecStrategy):
    """Every client trains its own model on its own data; nothing is shared."""

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> LocalOnly: no communication")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Ask every sampled client for one local epoch, uploading nothing."""
        return self.train_messages(server_round, ArrayRecord(), config, grid, upload="none")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the clients' training losses."""
        losses = []
        for msg in replies:
            if msg.has_error():
                self.drop(server_round, msg, f"client error: {msg.error.reason}")
                continue
            losses.append(float(msg.content.metric_records["metrics"].get("train-loss", 0.0)))
        if not losses:
            return None, None
        return ArrayRecord(), MetricRecord({"num-replies": len(losses),
                                            "train-loss": float(np.mean(losses))})
