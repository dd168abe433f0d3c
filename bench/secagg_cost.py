"""Cost of secure aggregation (protocol/secagg.py) against a plain float32 sum, one process.

Each of ``--nodes`` nodes holds an item-table update the size of ML-1M's (3,706 items x (64 + 1)
floats, embedding rows and biases, dense upload); the four steps run in one process
(:func:`florec.protocol.secagg_sim.simulate`), so the time is the work of every node and of the
server together, without network. Cases: no dropout, and 1 node dropping after masking.

Run: OMP_NUM_THREADS=1 python bench/secagg_cost.py --out docs/results/secagg/cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from florec.protocol.fixed_point import quant_bits
from florec.protocol.secagg_sim import simulate


def measure(nodes: int, items: int, dim: int, clip: float, drops: int, seed: int
            ) -> dict[str, float]:
    """One secure sum and one plain sum of the same vectors; times, bytes and the error."""
    rng = np.random.default_rng(seed)
    length = items * (dim + 1)
    ids = sorted(rng.choice(2**31, nodes, replace=False).tolist())
    xs = {u: (rng.standard_normal(length) * clip / 8).astype(np.float32) for u in ids}
    gone = frozenset(ids[:drops])
    t0 = time.perf_counter()
    plain = np.zeros(length)
    for u, x in xs.items():
        if u not in gone:
            plain += np.clip(x, -clip, clip)  # what the quantiser encodes
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    total, cost = simulate(xs, clip, drop_after_mask=gone)
    secure_s = time.perf_counter() - t0
    clipped = sum(int((np.abs(x) > clip).sum()) for x in xs.values())
    return {"nodes": nodes, "dropped_after_mask": drops, "entries": length,
            "entries_clipped": clipped,
            "quant_bits": quant_bits(nodes), "clip": clip,
            "max_abs_error": float(np.abs(total - plain).max()),
            "error_bound": nodes * clip / (2 ** quant_bits(nodes) - 1),
            "plain_s": plain_s, "secure_s": secure_s,
            "node_mask_s": cost["node_mask_s"], "server_unmask_s": cost["server_unmask_s"],
            "plain_bytes_up": cost["plain_up"], "secure_bytes_up": cost["up"],
            "secure_bytes_down_extra": cost["down"]}


def main() -> None:
    """Measure the cases and write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=61)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [measure(args.nodes, args.items, args.dim, args.clip, drops, seed=drops)
            for drops in (0, 1)]
    out = {"cases": rows, "machine": platform.processor() or platform.machine(),
           "note": "one process does every node's and the server's work; shared 2-core box"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
