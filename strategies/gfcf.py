"""Federated GF-CF in one round: parameter-free, so clients share filters, not embeddings.

- ``exact``: clients upload ``H_k = R_k^T D_{u,k}^{-1} R_k`` and their item degrees; the server
  sums both, which is exactly the centralized ``R^T D_u^{-1} R``, builds the centralized filter
  and sends it back: federated GF-CF then equals central GF-CF.
- ``gsp`` (FedCIA-GSP, the paper's protocol): clients upload their local filter ``F_k``; the
  server averages them; a client scores ``agg_p R_k F_bar + R_k F_k``.

Later rounds change nothing (no training); the filter rides on every evaluation message.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.models import gfcf
from florec.protocol.codec import to_record
from florec.strategies.base import RecStrategy
from florec.strategies.payload import checked_arrays, record_nbytes

MODES = ("exact", "gsp")


class FederatedGFCF(RecStrategy):
    """One-shot federated GF-CF with a streaming sum.

    Parameters
    ----------
    n_items : int
        Catalogue size.
    mode : {"exact", "gsp"}
        Summed Grams (equals central GF-CF) or the paper's averaged local filters.
    s, wp : int, float
        GF-CF's number of singular vectors and ideal low-pass weight (exact mode).
    seed : int
        Unused (no sampling: every client takes part).
    """

    def __init__(self, n_items: int, mode: str = "exact", s: int = 32, wp: float = 0.3,
                 seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"gfcf-mode '{mode}' is unknown; choose one of {MODES}")
        super().__init__(1.0, seed)
        self.n, self.mode, self.s, self.wp = n_items, mode, s, wp
        self.filter: np.ndarray | None = None

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FederatedGFCF: mode=%s s=%d wp=%.2f", self.mode, self.s, self.wp)

    def discard_round(self) -> None:
        """Ask every client again next round."""
        self.filter = None

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The global filter once built (checkpoints restore it)."""
        return {} if self.filter is None else {"filter": self.filter}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the global filter of a checkpoint."""
        self.filter = arrays.get("filter")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Ask every client for its upload once; nothing to do afterwards."""
        if self.filter is not None:
            return []
        config["server-round"] = server_round
        config["upload"] = "gfcf"
        record = RecordDict({"arrays": ArrayRecord(), "config": config})
        return self.messages(record, sorted(grid.get_node_ids()), MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sum uploads as they arrive; build the global filter."""
        if self.filter is not None:
            return to_record({"filter": self.filter}), None
        n = self.n
        expected = {"gram": (n, n), "degree": (n,)} if self.mode == "exact" \
            else {"filter": (n, n)}
        total, degree, count, clients = np.zeros((n, n)), np.zeros(n), 0, 0.0
        for msg in replies:
            up, problem = checked_arrays(msg, expected)
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            total += up["gram" if self.mode == "exact" else "filter"]
            if self.mode == "exact":
                degree += up["degree"]
            clients += float(msg.content.metric_records["metrics"].get("weight", 1.0))
            count += 1
        if count == 0:
            return None, None
        if self.mode == "exact":
            # float64: federated scores then equal central GF-CF to round-off, not to 1e-7
            self.filter = gfcf.filter_from_sums(total, degree, self.s, self.wp)
        else:
            self.filter = (total / clients).astype(np.float32)  # mean over clients
        return to_record({"filter": self.filter}), MetricRecord({"num-replies": count})
