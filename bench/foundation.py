"""Foundation benchmark: central MF-BPR vs FedAvg-MF (dense, sparse) on ML-100K, and Flower cost.

Part A (accuracy, equal epochs): for the leave-one-out and the 80/10/10 per-user split, central
MF-BPR trained for R epochs vs FedAvg-MF for R rounds of one local epoch over 100 nodes. The
federated runs use the in-process grid (the real ServerApp loop and ClientApp handlers, no Ray;
a test checks that it gives Flower's numbers), so they are quick and deterministic.

Part B (cost): real `flwr run` simulations with Ray on this machine: 100 nodes, and 943
one-user nodes; seconds per round (median over rounds after the first, which includes start-up)
and peak memory summed over every process of the run (SuperLink, ServerApp, Ray workers).

Usage: OMP_NUM_THREADS=1 python bench/foundation.py --out results/bench-foundation
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.central import run_central
from florec.sim.cli_common import CENTRAL_LR
from florec.sim.flower import flwr_run
from florec.sim.local_grid import LocalGrid
from florec.sim.perf import TreeMemory

SELECTION = {"loo": "ndcg@10", "ratio": "recall@20"}


def accuracy(out: Path, rounds: int, data_dir: str, fed: dict) -> list[dict]:
    """Central vs federated at equal epochs, both splits."""
    rows = []
    for split in ("loo", "ratio"):
        base = {"dataset": "ml-100k", "data-dir": data_dir, "split": split,
                "selection-metric": SELECTION[split], "num-rounds": rounds}
        cfg = parse_run_config(base | {"lr": CENTRAL_LR})
        central = run_central(cfg, rounds, 1024, out / f"central-{split}")
        rows.append(central)
        for aggregation in ("dense", "sparse"):
            cfg = parse_run_config(base | fed | {"aggregation": aggregation})
            grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
            rows.append(run_federated(grid, cfg, out / f"fedavg-{aggregation}-{split}"))
    return rows


def flower_cost(out: Path, rounds: int, data_dir: str, fed: dict) -> list[dict]:
    """Seconds per round and peak tree memory of real Flower simulations."""
    rows = []
    for label, extra in (("100 nodes", {"num-nodes": 100}),
                         ("943 one-user nodes", {"users-per-node": 1})):
        run_dir = (out / f"flower-{label.split()[0]}").resolve()
        cfg = parse_run_config({"dataset": "ml-100k", "data-dir": data_dir, "num-rounds": rounds,
                                "out-dir": str(run_dir)} | fed | extra)
        nodes = 100 if "num-nodes" in extra else 943
        t0 = time.perf_counter()
        with TreeMemory() as mem:
            flwr_run(cfg.to_flower() | {"num-nodes": cfg.num_nodes}, nodes)  # raises RunFailed
        wall = time.perf_counter() - t0
        lines = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
        rows.append({"setting": label, "exit": 0, "rounds": len(lines),
                     "first_round_s": lines[0]["seconds"],
                     "s_per_round": statistics.median(r["seconds"] for r in lines[1:]),
                     "bytes_per_round": lines[-1]["bytes_up"] + lines[-1]["bytes_down"],
                     "peak_tree_mb": mem.peak_mb, "wall_s": wall})
    return rows


def markdown(acc: list[dict], cost: list[dict]) -> str:
    """Two README tables."""
    lines = ["| split | method | recall@10 | ndcg@10 | recall@20 | best round | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in acc:
        m = r["metrics"]
        name = r["method"] + ("" if r["setting"] == "federated" else " (central)")
        lines.append(f"| {r['split']} | {name} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | "
                     f"{m['recall@20']:.4f} | {r['best_round']} | {r['wall_s']:.1f} |")
    lines += ["", "| Flower simulation | s/round (median) | first round s | MB/round (up+down) "
              "| peak memory, all processes (MB) |", "|---|---|---|---|---|"]
    for c in cost:
        lines.append(f"| {c['setting']} | {c['s_per_round']:.2f} | {c['first_round_s']:.1f} | "
                     f"{c['bytes_per_round'] / 2**20:.1f} | {c['peak_tree_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both parts and write bench.json and bench.md into --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench-foundation"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cost-rounds", type=int, default=4)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--fed", default="", help="federated overrides, key=value ...")
    ap.add_argument("--skip-cost", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from florec.sim.flower_config import parse_overrides

    fed = parse_overrides([args.fed])
    args.out.mkdir(parents=True, exist_ok=True)
    acc = accuracy(args.out, args.rounds, args.data_dir, fed)
    cost = [] if args.skip_cost else flower_cost(args.out, args.cost_rounds, args.data_dir, fed)
    (args.out / "bench.json").write_text(json.dumps({"accuracy": acc, "cost": cost,
                                                     "fed": fed, "threads": 1}, indent=2))
    table = markdown(acc, cost)
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
