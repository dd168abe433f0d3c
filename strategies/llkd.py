r"""Federated LLKD on the server: FedAvg of the student head and of the threshold states.

Every array of the global state is averaged with the nodes' pool sizes ``n_k`` as weights,

.. math:: \theta \leftarrow \frac{\sum_k n_k \theta_k}{\sum_k n_k},

the head's weights and bias and the two threshold states ``[mu, m(0..C-1)]`` alike (the
thresholds' EMA is merged as a sample-weighted mean of the nodes' EMAs), through
:class:`~florec.strategies.fedavg_params.FedAvgParams`. Evaluation pools the nodes'
correct-prediction sums (``hr@1`` = accuracy, ``ndcg@10`` of the true class among the ranked
classes) and their per-class TP/FP/FN counts, from which this strategy computes macro-F1.
The server sees no text and no item a user interacted with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from florec.protocol.codec import to_record
from florec.recdata.runconfig import RunConfig
from florec.strategies.fedavg_params import FedAvgParams


def macro_f1_from_counts(sums: dict[str, float], part: str, n_classes: int) -> float:
    """``(1/C) sum_c 2 TP_c / (2 TP_c + FP_c + FN_c)`` from pooled ``llkd/<part>-tp-c`` counts."""
    f1 = []
    for c in range(n_classes):
        tp, fp, fn = (sums.get(f"llkd/{part}-{x}-{c}", 0.0) for x in ("tp", "fp", "fn"))
        f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else 0.0)
    return float(np.mean(f1))


class FedLLKD(FedAvgParams):
    """FedAvg of the LLKD student and thresholds, with macro-F1 per evaluated round."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg.fraction_train, cfg.seed)
        self.n_classes = cfg.llkd_classes
        self.macro_f1: dict[int, dict[str, float]] = {}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Pool the sums (base class) and keep this round's macro-F1 of ``valid`` and ``test``."""
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is not None:
            sums = dict(pooled)
            self.macro_f1[server_round] = {
                part: macro_f1_from_counts(sums, part, self.n_classes)
                for part in ("valid", "test")}
        return pooled

    def after_rounds(self, grid: Any, run: dict[str, Any], out_dir: Any = None
                     ) -> dict[str, Any]:
        """Macro-F1 of the best round (and of every round) for the run entry."""
        best = run.get("best_round")
        return {"llkd": {"macro-f1": self.macro_f1.get(best, {}),
                         "macro-f1-by-round": {str(k): v for k, v in self.macro_f1.items()}}}


def build_llkd_strategy(cfg: RunConfig) -> tuple[FedLLKD, ArrayRecord]:
    """The strategy and the seeded initial head and thresholds (the encoder gives the width)."""
    from florec.models.llkd.train import initial_state
    from florec.models.llm.encoder import SentenceEncoder

    dim = SentenceEncoder(cfg.encoder, progress=False).dim
    return FedLLKD(cfg), to_record(initial_state(cfg.llkd_classes, dim, cfg.llkd_ema, cfg.seed))
