"""Secure aggregation inside real FedAvg-MF rounds: seconds and bytes per round vs plain.

For each aggregation mode (``dense``, ``sparse``), the same FedAvg-MF run (same seed, split and
nodes) is trained with ``secagg=false`` and ``secagg=true``, side by side in one process: the
real ServerApp loop (:func:`florec.server.app.run_federated`) and the real ClientApp handlers
over an in-process grid (:class:`florec.sim.local_grid.LocalGrid`; no SuperLink, no Ray, so
the nodes run one after another and every node's masking adds to the round's wall time).
Per run it records, from ``rounds.jsonl``: training seconds per round (round time minus
evaluation), bytes up and down per round, the secure exchanges' seconds and the clipped
entries, and the largest difference of the final item table from the plain run's.

Run: FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/secagg_rounds.py \
     --out docs/results/secagg/rounds_ml1m.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import MessageType

from florec.protocol.codec import from_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid


class LastTableGrid(LocalGrid):
    """A LocalGrid that keeps only the last evaluation message's item table (memory)."""

    def push_messages(self, messages):  # noqa: D102
        messages = list(messages)
        for msg in messages:
            if msg.metadata.message_type == MessageType.EVALUATE:
                self.table = from_record(msg.content.array_records["arrays"])["item_emb"]
        return super().push_messages(messages)


def one_run(base: dict, mode: str, secure: bool, out: Path) -> tuple[dict, np.ndarray]:
    """Train one run; its per-round costs and its final item table."""
    cfg = parse_run_config(base | {"aggregation": mode, "secagg": secure})
    grid = LastTableGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False)
    t0 = time.perf_counter()
    result = run_federated(grid, cfg, out)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    train_s = [r["seconds"] - r.get("eval_seconds", 0.0) for r in rows]
    row = {"mode": mode, "secagg": secure, "rounds": len(rows), "wall_s": wall,
           "train_s_per_round": float(np.mean(train_s)), "train_s": train_s,
           "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in rows])),
           "bytes_down_per_round": float(np.mean([r["bytes_down"] for r in rows])),
           "test": result.get("metrics", {})}
    if secure:
        row |= {"secagg_s": [r["train"]["secagg-s"] for r in rows],
                "secagg_clipped": [r["train"]["secagg-clipped"] for r in rows],
                "secagg_alive": [r["train"]["secagg-alive"] for r in rows]}
    return row, grid.table


def main() -> None:
    """Plain and secure runs per mode; writes the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--nodes", type=int, default=61)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="dense,sparse")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    base = {"dataset": args.dataset, "split": "ratio", "dim": 64, "num-nodes": args.nodes,
            "num-rounds": args.rounds, "eval-every": args.rounds, "ks": "10,20",
            "selection-metric": "recall@20", "seed": 0}
    runs = []
    with tempfile.TemporaryDirectory(prefix="florec-secagg-") as tmp:
        for mode in args.modes.split(","):
            plain, table = one_run(base, mode, False, Path(tmp) / f"{mode}-plain")
            secure, secure_table = one_run(base, mode, True, Path(tmp) / f"{mode}-secure")
            secure["max_abs_table_diff"] = float(np.abs(secure_table - table).max())
            secure["time_ratio"] = secure["train_s_per_round"] / plain["train_s_per_round"]
            secure["bytes_up_ratio"] = secure["bytes_up_per_round"] / plain["bytes_up_per_round"]
            runs += [plain, secure]
            print(json.dumps({k: v for k, v in secure.items() if not isinstance(v, list)}),
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "config": base | {"secagg-clip": parse_run_config(base).secagg_clip},
        "machine": f"{platform.processor() or platform.machine()}, shared by 8 engineers",
        "note": "in-process grid: nodes run one after another on one core", "runs": runs},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
