"""FedCIA factored r=2d at scale: s/round and the server's peak memory on three catalogues.

For each dataset (``fedcia-ml100k`` 1,682 items, ``fedcia-ml1m`` 3,952, ``fedcia-bx`` 19,997)
one in-process federation runs ``--rounds`` rounds of FedCIA-MF, factored, r=2d, d=64, 100
clients (10 nodes of 10; the paper's settings) and reports the median seconds per round
(training, server step and alignment; evaluation apart). The last round's uploads (each node's
``n x 640`` stacked factors) are kept and replayed into a fresh server under ``tracemalloc``,
streamed one reply at a time as the ServerApp pulls them: the peak traced memory of the server's
step (the stack, its compressions, the rank-r downlink, the reply in flight; numpy allocations
are traced) and its seconds. On catalogues whose ``n`` float64 columns exceed the stack budget
(fedcia-bx) the server keeps a streaming sketch and reports the share of the trace it kept;
``--exact-check`` also replays the exact stack (budget raised) and reports the relative error
of the sketched ``A A^T``.

Usage: OMP_NUM_THREADS=1 python bench/fedcia_scale.py --out docs/results/fedcia_scale
       [--datasets fedcia-ml100k,fedcia-ml1m,fedcia-bx] [--rounds 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from florec.protocol.codec import from_record, to_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.bench import label_folder
from florec.sim.local_grid import LocalGrid
from florec.strategies import fedcia
from florec.strategies.fedcia_stack import STACK_BUDGET_MB

MB = 2**20
BASE = {"algorithm": "fedcia", "num-nodes": 10, "clients-per-node": 10, "lr": 0.1,
        "local-batch-size": 4096, "dim": 64, "fedcia-comm": "factored", "fedcia-rank": 128,
        "partition": "floor", "selection-metric": "f1@10"}
#: the authors' split where they ship one, else a seeded per-user ratio split
SPLITS = {"fedcia-ml100k": "given", "fedcia-ml1m": "given"}


class Capture:
    """Wraps ``FedCIA.aggregate_train`` to keep the decoded uploads of the latest round."""

    def __init__(self) -> None:
        self.uploads: list[tuple[np.ndarray, float]] = []
        self.original = fedcia.FedCIA.aggregate_train

    def __enter__(self) -> Capture:
        capture = self

        def aggregate_train(strategy: fedcia.FedCIA, server_round: int,
                            replies: Iterable[Message]) -> Any:
            replies = list(replies)
            capture.uploads = [
                (from_record(m.content.array_records["arrays"])["factor"],
                 float(m.content.metric_records["metrics"].get("weight", 1.0)))
                for m in replies if not m.has_error()]
            return capture.original(strategy, server_round, iter(replies))

        fedcia.FedCIA.aggregate_train = aggregate_train  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        fedcia.FedCIA.aggregate_train = self.original  # type: ignore[method-assign]


def upload_handler(uploads: list[tuple[np.ndarray, float]]) -> Any:
    """A train handler that answers with the next recorded upload."""
    answers = iter(uploads)

    def handler(msg: Message, ctx: Any) -> Message:
        factor, weight = next(answers)
        return Message(RecordDict({"arrays": to_record({"factor": factor}), "metrics":
                                   MetricRecord({"weight": weight, "train-loss": 0.0})}),
                       reply_to=msg)

    return handler


def server_step(n: int, uploads: list[tuple[np.ndarray, float]], rank: int,
                stack_mb: float | None = None) -> dict[str, Any]:
    """One factored server step over streamed uploads: peak traced MiB, seconds, downlink.

    Each reply is made when the server pulls it (as the ServerApp streams them) and dropped
    after it is folded in, so the peak is the server's state plus one reply in flight.
    """
    strategy = fedcia.FedCIA(n, "factored", rank, stack_mb=stack_mb)
    grid = LocalGrid({}, len(uploads), handlers={MessageType.TRAIN: upload_handler(uploads)},
                     keep_replies=False)
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
        _, metrics = strategy.aggregate_train(
            1, (r for m in messages for r in grid.send_and_receive([m])))
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"peak_mb": peak / MB, "seconds": seconds, "metrics": dict(metrics or {}),
            "factor": strategy.downlink["factor"] if strategy.downlink else None}


def measure(dataset: str, rounds: int, data_dir: str, out: Path, exact_check: bool = False
            ) -> dict[str, Any]:
    """One dataset: the federated run's s/round, then the replayed server step."""
    cfg = parse_run_config(BASE | {"dataset": dataset, "split": SPLITS.get(dataset, "ratio"),
                                   "num-rounds": rounds, "data-dir": data_dir})
    folder = out / label_folder(dataset)
    with Capture() as capture:
        run = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                            folder)
    rows = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    n = capture.uploads[0][0].shape[0]
    step = server_step(n, capture.uploads, cfg.fedcia_rank)
    row = {"dataset": dataset, "items": n, "clients": cfg.num_nodes * cfg.clients_per_node,
           "rounds": rounds, "split": cfg.split,
           "round_s": [r["seconds"] - r.get("eval_seconds", 0.0) for r in rows],
           "align_s": [r.get("align", {}).get("align-seconds-sum", 0.0) for r in rows],
           "eval_s": [r.get("eval_seconds", 0.0) for r in rows],
           "run_rss_peak_mb": run.get("rss_peak_mb"),
           "upload_mb_per_node": float(np.mean([u.nbytes for u, _ in capture.uploads])) / MB,
           "server_peak_mb": step["peak_mb"], "server_s": step["seconds"],
           "captured_energy": step["metrics"].get("captured-energy"),
           "sketch_trace_kept": step["metrics"].get("sketch-trace-kept"),
           "recall@10": run["metrics"].get("recall@10"),
           "ndcg@10": run["metrics"].get("ndcg@10")}
    row["median_round_s"] = statistics.median(row["round_s"])
    if "sketch-trace-kept" in step["metrics"] and exact_check:
        exact = server_step(n, capture.uploads, cfg.fedcia_rank, stack_mb=float("inf"))
        a, b = (s["factor"].astype(np.float64) for s in (step, exact))
        # ||A A^T - B B^T||_F from the r x r products, never n x n
        diff = np.sqrt(max(np.sum((a.T @ a) ** 2) + np.sum((b.T @ b) ** 2)
                           - 2 * np.sum((a.T @ b) ** 2), 0.0))
        row |= {"exact_server_peak_mb": exact["peak_mb"], "exact_server_s": exact["seconds"],
                "exact_captured_energy": exact["metrics"].get("captured-energy"),
                "sketch_relative_error": float(diff / np.sqrt(np.sum((b.T @ b) ** 2)))}
    return row


def main() -> None:
    """Measure each dataset and write ``scale.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/fedcia_scale"))
    ap.add_argument("--datasets", default="fedcia-ml100k,fedcia-ml1m,fedcia-bx")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--exact-check", action="store_true",
                    help="replay a sketched server step exactly too (slow on fedcia-bx)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scale.json"
    done = json.loads(path.read_text())["rows"] if path.exists() else []
    for dataset in args.datasets.split(","):
        row = measure(dataset, args.rounds, args.data_dir, args.out / "runs", args.exact_check)
        done = [r for r in done if r["dataset"] != dataset] + [row]
        path.write_text(json.dumps({
            "script": "bench/fedcia_scale.py", "stack_budget_mb": STACK_BUDGET_MB,
            "rows": done, "env": {"python": platform.python_version(), "numpy": np.__version__,
                                  "torch": torch.__version__,
                                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}},
            indent=1, default=float) + "\n")
        print(f"{dataset}: {row['median_round_s']:.1f} s/round, server peak "
              f"{row['server_peak_mb']:.0f} MiB in {row['server_s']:.1f} s")


if __name__ == "__main__":
    main()
