"""FedCIA: clients share item-item similarity, never embeddings (Han et al., SIGIR 2025).

Each round the sampled clients train locally and upload their similarity ``S_k = E_k E_k^T``;
the server keeps one running sum (an ``n x n`` array in dense mode, a bounded factor stack in
factored mode, whatever the number of clients), forms
``S_bar = sum_k w_k S_k / sum_k w_k`` and sends it back in a second message (``train.align``)
so every client pulls its own item table towards it. Two communication modes:

- ``dense``: the paper's protocol, ``n x n`` up and down (down as ``S_bar``'s eigendecomposition,
  :func:`eigen_downlink`: as many numbers, solved once on the server, so that nodes align at
  ``O(n d^2)`` a step).
- ``factored``: a client uploads ``E_k Q_k`` (``n x d``, a fresh random rotation ``Q_k``), which
  determines ``S_k`` exactly; the server sends a rank-``r`` factor ``A`` of ``S_bar``
  (top-``r`` eigenpairs, ``A = U_r Lambda_r^{1/2}``) and clients align without forming ``n x n``.
  ``r = n`` reproduces ``dense``. The server never forms ``S_bar`` either: it stacks the factors
  ``B = [F_1, ..., F_K]`` (``S_bar = B B^T / w``) and takes the top eigenpairs of the small
  ``B^T B`` (:class:`florec.strategies.fedcia_stack.FactorStack`); the stack is compressed
  exactly past ``n`` columns, or, on catalogues where ``n`` float64 columns exceed the stack's
  budget, truncated to its top singular directions (a streaming sketch) so server memory stays
  bounded.

Dense mode keeps an ``n x n`` float64 sum on the server and solves its eigendecomposition once a
round (about :data:`DENSE_PEAK_BYTES_PER_N2` bytes per ``n^2`` at the peak, ``O(n^3)`` time); it
refuses catalogues whose peak passes :data:`DENSE_LIMIT_BYTES` (Book-Crossing's 19,997 items
would need 19 GB).

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

from florec.models.gfcf import top_eigh
from florec.protocol.codec import to_record
from florec.recdata.errors import ConfigError
from florec.strategies.base import RecStrategy
from florec.strategies.fedcia_dp import SimilarityDP
from florec.strategies.fedcia_stack import FactorStack
from florec.strategies.payload import checked_arrays, record_nbytes

ALIGN = f"{MessageType.TRAIN}.align"
COMM_MODES = ("dense", "factored")
#: the dense server's peak per n^2: the float64 sum, its symmetric part, and LAPACK's copy,
#: workspace and eigenvectors (``bench/fedcia_memory.py``: 5.0-5.1 matrices beside the sum)
DENSE_PEAK_BYTES_PER_N2 = 48
#: dense mode refuses catalogues whose peak exceeds this (n above 9,459)
DENSE_LIMIT_BYTES = 4 * 2**30


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


def eigen_downlink(s_bar: np.ndarray) -> dict[str, np.ndarray]:
    r"""Dense mode's downlink: the eigendecomposition of ``S_bar``'s symmetric part.

    .. math:: \tfrac12(\bar S + \bar S^\top) = Q \Lambda Q^\top

    As many numbers as ``S_bar`` itself (``n^2 + n + 1``), solved once on the server (in float64,
    with NumPy's ``eigh``, which releases the GIL) so that every node aligns in the eigenbasis
    (:func:`florec.client.trainers.align.align_eigen`) instead of multiplying by ``n x n`` at
    every step.

    The alignment loss ``||E E^T - S_bar||_F`` depends on the antisymmetric part of ``S_bar``
    (Laplace ``noise-scale`` is added entry by entry) only through the constant
    ``||S_bar||_F^2``, sent beside the eigenpairs.

    Returns
    -------
    dict
        ``basis`` (``Q``, ``n x n`` float32, eigenvectors as columns), ``eigvals`` (``Lambda``,
        ``n`` float32) and ``norm-sq`` (``||S_bar||_F^2``, one float64).
    """
    s_bar = np.asarray(s_bar, dtype=np.float64)
    norm_sq = np.vdot(s_bar, s_bar)
    sym = s_bar + s_bar.T
    sym *= 0.5
    vals, vecs = np.linalg.eigh(sym)
    del sym
    return {"basis": vecs.astype(np.float32), "eigvals": vals.astype(np.float32),
            "norm-sq": np.array([norm_sq])}


def upload_norms(norms: list[float]) -> dict[str, float]:
    """Round metrics of the nodes' mean similarities ``||S_node||_F``: median and largest.

    They show the scale of benign uploads, from which a norm bound (``defense-norm``) is set.
    """
    return {"upload-norm-median": float(np.median(norms)), "upload-norm-max": max(norms)}


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
        Dense mode on a catalogue whose server peak (``n x n`` sum and eigensolve) would exceed
        :data:`DENSE_LIMIT_BYTES`; a factored rank the stack's budget cannot keep.

    """

    def __init__(self, n_items: int, comm: str = "dense", rank: int = 128,
                 weighting: str = "uniform", fraction_train: float = 1.0, seed: int = 0,
                 stack_mb: float | None = None) -> None:
        if comm not in COMM_MODES:
            raise ValueError(f"fedcia-comm '{comm}' is unknown; choose one of {COMM_MODES}")
        if comm == "dense" and DENSE_PEAK_BYTES_PER_N2 * n_items**2 > DENSE_LIMIT_BYTES:
            gb = DENSE_PEAK_BYTES_PER_N2 * n_items**2 / 1e9
            raise ConfigError(f"fedcia-comm='dense' needs n x n matrices on the server ({gb:.1f} "
                              f"GB at the peak for {n_items} items); use fedcia-comm='factored'")
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
        weight, accepted, loss, clients, norms = 0.0, 0, 0.0, 0, []
        key, expected = ("gram", (self.n, self.n)) if dense else ("factor", None)
        for msg in replies:
            arrays, problem = checked_arrays(msg, {key: expected})
            up = None if problem else arrays[key]
            if up is not None and not dense and (up.ndim != 2 or up.shape[0] != self.n):
                problem = f"factor has shape {up.shape}, expected ({self.n}, d)"
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            metrics = msg.content.metric_records.get("metrics", {})
            if dense:
                total += up  # already weighted on the node
                norms.append(float(np.linalg.norm(up)) / float(metrics.get("weight", 1.0)))
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
            total /= weight
            self.downlink = eigen_downlink(total)
            out |= upload_norms(norms)
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
        """Send ``S_bar`` (its eigendecomposition, or its factor) to every responsive client."""
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
