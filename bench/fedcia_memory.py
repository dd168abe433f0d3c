"""FedCIA server memory against the number of clients: peak traced memory of one dense round.

Each of ``k`` clients uploads an ``n x n`` float32 similarity (``n`` = 1,682, ML-100K's
catalogue); the uploads are made when the server pulls the reply (as a Flower grid streams
them), and ``FedCIA.aggregate_train`` folds each into one float64 ``n x n`` running sum. The peak
of Python's traced memory (``tracemalloc``: numpy arrays included) over the whole round is
reported per client count; a server whose memory grew with the clients would show ``k`` uploads.
Flower's ``RecordDict`` holds reference cycles, so a folded reply is freed by Python's cycle
collector, at a time set by allocation counts; the replies are fed with a collection before every
tenth, so the peak measures what the server keeps, not the collector's timing.

``tracemalloc`` does not see LAPACK's workspace, so the downlink's eigensolve
(:func:`florec.strategies.fedcia.eigen_downlink`) is also measured by itself: the growth of the
peak resident set (``VmHWM``, Linux) of a fresh process over the call, per ``--eigensolve-items``,
in ``n x n`` float64 matrices beside the sum.

Usage: python bench/fedcia_memory.py [--items 1682] [--clients 20,200]
       [--eigensolve-items 1682,3000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from florec.sim.local_grid import LocalGrid
from florec.strategies.fedcia import FedCIA

MB = 2**20


def upload_handler(n: int, seed: int) -> Callable[[Message, Any], Message]:
    """A train handler whose reply is a fresh seeded symmetric ``n x n`` float32 upload."""
    rng = np.random.default_rng(seed)

    def handler(msg: Message, ctx: Any) -> Message:
        e = rng.standard_normal((n, 64), dtype=np.float32) * 0.1
        arrays = ArrayRecord({"gram": Array(np.ascontiguousarray(e @ e.T))})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"weight": 1.0, "train-loss": 0.0})}), reply_to=msg)

    return handler


def streamed(grid: LocalGrid, messages: Iterable[Message]) -> Iterator[Message]:
    """Each message's reply as the server pulls it, with a cycle collection before every tenth."""
    for i, msg in enumerate(messages):
        if i % 10 == 0:  # at most 10 folded replies wait for the collector
            gc.collect()
        yield from grid.send_and_receive([msg])


def peak_mb(n: int, clients: int, seed: int = 0) -> dict[str, float]:
    """Peak traced MiB of one dense FedCIA aggregation over ``clients`` streamed uploads.

    Returns
    -------
    dict
        ``peak_mb`` (tracemalloc peak during the round), ``upload_mb`` (one upload's size) and
        ``accumulator_mb`` (the float64 running sum's size).

    """
    strategy = FedCIA(n, "dense")
    grid = LocalGrid({}, clients, handlers={MessageType.TRAIN: upload_handler(n, seed)},
                     keep_replies=False)
    tracemalloc.start()
    try:
        messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
        replies = streamed(grid, messages)
        _, metrics = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if metrics is None or metrics["num-replies"] != clients:
        raise RuntimeError(f"expected {clients} accepted uploads, got {metrics}")
    return {"peak_mb": peak / MB, "upload_mb": n * n * 4 / MB, "accumulator_mb": n * n * 8 / MB}


#: run in a fresh interpreter, whose ``VmHWM`` (peak resident set of its address space, Linux)
#: starts at its own imports (``ru_maxrss`` would carry the parent's peak across ``exec``)
EIGENSOLVE_CHILD = """
import sys
import numpy as np
from florec.strategies.fedcia import eigen_downlink
def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
e = np.random.default_rng(0).standard_normal((int(sys.argv[1]), 64))
total = e @ e.T
del e
before = hwm_kib()
eigen_downlink(total)
print((hwm_kib() - before) / 1024)
"""


def eigensolve_peak(n: int) -> dict[str, float]:
    """The eigensolve's peak resident growth, measured in a fresh interpreter.

    Returns
    -------
    dict
        ``items``, ``eigensolve_rss_mb`` (growth of the peak resident set over the call) and
        ``eigensolve_matrices`` (that growth in ``n x n`` float64 matrices).

    """
    out = subprocess.run([sys.executable, "-c", EIGENSOLVE_CHILD, str(n)], check=True,
                         capture_output=True, text=True).stdout
    grown = float(out.split()[-1])
    return {"items": n, "eigensolve_rss_mb": grown, "eigensolve_matrices": grown / (n * n * 8 / MB)}


def main() -> None:
    """Command line: measure each client count and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--clients", default="20,200")
    ap.add_argument("--eigensolve-items", default="1682,3000")
    ap.add_argument("--out", type=Path, default=Path("results/fedcia_memory.json"))
    args = ap.parse_args()
    rows = [{"items": args.items, "clients": int(k)} | peak_mb(args.items, int(k))
            for k in args.clients.split(",")]
    solves = [eigensolve_peak(int(n)) for n in args.eigensolve_items.split(",") if n]
    result = {"script": "bench/fedcia_memory.py", "rows": rows, "eigensolve": solves,
              "env": {"python": platform.python_version(), "numpy": np.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(f"{r['clients']:>5} clients: peak {r['peak_mb']:.0f} MiB traced "
              f"(one upload {r['upload_mb']:.1f} MiB, accumulator {r['accumulator_mb']:.1f} MiB)")
    for r in solves:
        print(f"eigensolve, {r['items']} items: +{r['eigensolve_rss_mb']:.0f} MiB resident "
              f"({r['eigensolve_matrices']:.2f} n x n float64 matrices)")


if __name__ == "__main__":
    main()
