"""FedCIA dense alignment on a node: the ``n x n`` product against the eigenbasis, side by side.

One node's clients (``--clients`` tables of ``n x d``, float32 as on the nodes) align to the
mean of their similarities for ``--steps`` steps, with :func:`align_dense` (one ``n x n``
product a step, the path before 2026-12-07) and with :func:`align_eigen` from the server's
:func:`eigen_downlink` (float32 on the wire). The two alternate ``--repeats`` times in one
process, torch pinned to ``--threads`` threads; the server's eigensolve is timed separately
(it runs once per round, whatever the number of nodes). Writes the median seconds, their
ratio, the largest table difference and the 1-minute load average before and after.

Usage: OMP_NUM_THREADS=1 python bench/fedcia_align_speed.py [--items 3883] [--clients 5]
       [--dim 64] [--steps 100] [--repeats 3] [--threads 1]
       [--out docs/results/fedcia/align_speed.json]

3,883 items is ML-1M's catalogue as FloRec loads it (every movie of ``movies.dat``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from florec.client.trainers.align import align_dense, align_eigen
from florec.strategies.fedcia import eigen_downlink


def timed(fn, *args, **kwargs) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def measure(items: int, clients: int, dim: int, steps: int, repeats: int) -> dict:
    """Median seconds of both alignments over alternated repeats, and the server's eigensolve."""
    gen = torch.Generator().manual_seed(0)
    embs = [0.1 * torch.randn(items, dim, generator=gen) for _ in range(clients)]
    s_bar = sum(e.double() @ e.double().T for e in embs) / clients
    start = time.perf_counter()
    down = eigen_downlink(s_bar.numpy())
    solve = time.perf_counter() - start
    basis, vals = torch.from_numpy(down["basis"]), torch.from_numpy(down["eigvals"])
    dense_s, eigen_s, diff = [], [], 0.0
    for _ in range(repeats):
        by_dense, by_eigen = [e.clone() for e in embs], [e.clone() for e in embs]
        dense_s.append(timed(align_dense, by_dense, s_bar.float(), steps, 0.1))
        eigen_s.append(timed(align_eigen, by_eigen, basis, vals, steps, 0.1,
                             norm_sq=float(down["norm-sq"][0])))
        diff = max(diff, *(float((a - b).abs().max()) for a, b in zip(by_dense, by_eigen,
                                                                         strict=True)))
    dense, eigen = statistics.median(dense_s), statistics.median(eigen_s)
    return {"dense_s": dense_s, "eigen_s": eigen_s, "dense_median_s": dense,
            "eigen_median_s": eigen, "ratio_eigen_over_dense": eigen / dense,
            "server_eigensolve_s": solve, "max_table_difference": diff}


def main() -> None:
    """Command line: measure and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3883)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("docs/results/fedcia/align_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    row = measure(args.items, args.clients, args.dim, args.steps, args.repeats)
    result = {"script": "bench/fedcia_align_speed.py", "args": {
        k: v for k, v in vars(args).items() if k != "out"}, **row,
        "load_1min": [load_before, os.getloadavg()[0]],
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"dense {row['dense_median_s']:.2f} s, eigen {row['eigen_median_s']:.2f} s "
          f"({row['ratio_eigen_over_dense']:.3f}x), server eigensolve "
          f"{row['server_eigensolve_s']:.2f} s, max difference {row['max_table_difference']:.2e}")


if __name__ == "__main__":
    main()
