"""FedCIA benchmark: accuracy, speed and bytes of FedCIA variants beside FedAvg, local and central.

Runs on the authors' split of ML-100K (``fedcia-ml100k``: 100 clients of consecutive users,
global 72/8/20 split) and on FloRec's ML-100K per-user 80/10/10 split, with d=64. Federated runs
use the in-process grid (the real ServerApp loop and ClientApp handlers, no Ray); FedCIA's 100
clients sit 10 per node so a node batches its clients' alignment. A last part measures bytes per
client and round, dense vs factored, with one client per node on ML-100K and ML-1M.

A ``long`` part runs FedCIA-MF factored r=2d and FedAvg-MF for the same ``--long-rounds`` (20)
on the authors' split. Each run's folder (``config.json``, ``rounds.jsonl``, ``results.json``) is
``OUT/<part>/<label without spaces>/``; a folder holding a finished run of the same resolved
config is read instead of run again, so an interrupted bench resumes where it stopped.

Usage: python bench/fedcia.py --out results/bench-fedcia [--rounds 4] [--threads 2]
       [--parts paper,ours,bytes,long] [--long-rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from florec.models.metrics_compat import f1_of_means
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.server.results import read_results
from florec.sim.bench import label_folder
from florec.sim.central import run_central
from florec.sim.cli_common import CENTRAL_LR
from florec.sim.local_grid import LocalGrid

PAPER = {"split": "given", "partition": "floor", "selection-metric": "f1@10"}
OURS = {"split": "ratio", "selection-metric": "f1@10"}
FEDCIA = {"algorithm": "fedcia", "num-nodes": 10, "clients-per-node": 10, "lr": 0.1,
          "local-batch-size": 4096, "dim": 64}


def federated(label: str, config: dict[str, Any], out: Path) -> dict[str, Any]:
    """One in-process federated run; adds per-round cost figures to its results entry."""
    cfg = parse_run_config(config)
    folder = out / label_folder(label)
    run = finished_run(folder, cfg.to_flower())
    if run is None:
        run = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                            folder)
    rows = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    clients = cfg.num_nodes * cfg.clients_per_node
    run.update(label=label, s_per_round=statistics.median(r["seconds"] for r in rows),
               align_s=statistics.median(r.get("align", {}).get("align-seconds-sum", 0.0)
                                         for r in rows),
               mb_per_round=statistics.mean(r["bytes_up"] + r["bytes_down"] for r in rows) / 2**20,
               up_kb_per_client=statistics.mean(r["bytes_up"] for r in rows) / clients / 1024)
    return run


def finished_run(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run dict of ``folder`` if it finished with ``config`` (``out-dir`` aside), else None."""
    try:
        saved = json.loads((folder / "config.json").read_text())["config"]
        results = read_results(folder)
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    same = {k: v for k, v in saved.items() if k != "out-dir"} == {
        k: v for k, v in json.loads(json.dumps(config)).items() if k != "out-dir"}
    return results["runs"][0] if same and results.get("status") == "finished" else None


def central(label: str, config: dict[str, Any], epochs: int, out: Path) -> dict[str, Any]:
    """One central run."""
    run = run_central(parse_run_config(config), epochs, 1024, out / label_folder(label))
    return run | {"label": label, "s_per_round": run["wall_s"] / max(epochs, 1), "align_s": 0.0,
                  "mb_per_round": 0.0, "up_kb_per_client": 0.0}


def accuracy_matrix(base: dict, rounds: int, out: Path, sweep: bool) -> list[dict[str, Any]]:
    """Central and federated methods on one dataset/split."""
    fed = base | FEDCIA | {"num-rounds": rounds}
    runs = [central("central MF", base | {"model": "mf", "lr": CENTRAL_LR}, 20, out),
            central("central GF-CF", base | {"model": "gfcf"}, 0, out),
            federated("FedCIA-GF-CF exact", base | FEDCIA | {"model": "gfcf", "num-rounds": 1},
                      out),
            federated("FedCIA-GSP", base | FEDCIA | {"model": "gfcf", "gfcf-mode": "gsp",
                                                     "num-rounds": 1}, out),
            federated("FedCIA-MF dense", fed, out)]
    for mult in (1, 2, 4) if sweep else (2,):
        runs.append(federated(f"FedCIA-MF factored r={mult}d", fed | {
            "fedcia-comm": "factored", "fedcia-rank": mult * 64}, out))
    runs += [federated("FedCIA-LightGCN factored r=2d", fed | {
                 "model": "lightgcn", "fedcia-comm": "factored", "fedcia-rank": 128,
                 "reg": 1e-3}, out),
             federated("Local-MF", fed | {"algorithm": "local"}, out),
             federated("FedAvg-MF (20 rounds)", base | {"algorithm": "fedavg", "num-nodes": 100,
                                                       "num-rounds": 20}, out)]
    return runs


def long_runs(base: dict, rounds: int, out: Path) -> list[dict[str, Any]]:
    """FedCIA-MF factored r=2d and FedAvg-MF given the same number of rounds."""
    fed = base | FEDCIA | {"num-rounds": rounds}
    return [federated(f"FedCIA-MF factored r=2d ({rounds} rounds)", fed | {
                "fedcia-comm": "factored", "fedcia-rank": 128}, out),
            federated(f"FedAvg-MF ({rounds} rounds)", base | {
                "algorithm": "fedavg", "num-nodes": 100, "num-rounds": rounds}, out)]


def bytes_matrix(data_dir: str, out: Path) -> list[dict[str, Any]]:
    """Bytes per client and round, one client per node (no node-side pre-summing)."""
    runs = []
    for dataset in ("fedcia-ml100k", "fedcia-ml1m"):
        for comm in ("dense", "factored"):
            cfg = {"dataset": dataset, "data-dir": data_dir, **PAPER, **FEDCIA,
                   "num-nodes": 100, "clients-per-node": 1, "num-rounds": 1, "align-steps": 1,
                   "fedcia-comm": comm, "fedcia-rank": 128}
            run = federated(f"{dataset} {comm}", cfg, out)
            runs.append({"dataset": dataset, "comm": comm, "mb_per_round": run["mb_per_round"],
                         "up_kb_per_client": run["up_kb_per_client"]})
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table of test metrics at the best validation round and costs."""
    lines = ["| method | P@10 | R@10 | F1@10 | f1_of_means@10 | NDCG@10 | best round | s/round "
             "| align s/round | MB/round | upload KB/client | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["metrics"]
        lines.append(
            f"| {r['label']} | {m['precision@10']:.4f} | {m['recall@10']:.4f} | "
            f"{m['f1@10']:.4f} | {f1_of_means(m, 10):.4f} | {m['ndcg@10']:.4f} | "
            f"{r['best_round']} | {r['s_per_round']:.1f} | {r['align_s']:.1f} | "
            f"{r['mb_per_round']:.1f} | {r['up_kb_per_client']:.0f} | {r['rss_peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    """Run the three parts and write bench.json and bench.md into --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench-fedcia"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--parts", default="paper,ours,bytes")
    ap.add_argument("--long-rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    report, dump = [], {}
    for name, base, sweep in (("paper", {"dataset": "fedcia-ml100k", **PAPER}, True),
                              ("ours", {"dataset": "ml-100k", **OURS}, False)):
        if name in parts:
            runs = accuracy_matrix(base | {"data-dir": args.data_dir}, args.rounds,
                                   args.out / name, sweep)
            dump[name] = runs
            report += [f"### {base['dataset']} ({base['split']} split)", "", table(runs), ""]
            (args.out / "bench.md").write_text("\n".join(report) + "\n")
    if "long" in parts:
        base = {"dataset": "fedcia-ml100k", **PAPER, "data-dir": args.data_dir}
        dump["long"] = long_runs(base, args.long_rounds, args.out / "long")
        report += [f"### fedcia-ml100k (given split), {args.long_rounds} rounds", "",
                   table(dump["long"]), ""]
    if "bytes" in parts:
        dump["bytes"] = bytes_matrix(args.data_dir, args.out / "bytes")
        report += ["### bytes, one client per node", "", "| dataset | mode | MB/round (up+down) "
                   "| upload KB/client |", "|---|---|---|---|"]
        report += [f"| {b['dataset']} | {b['comm']} | {b['mb_per_round']:.1f} | "
                   f"{b['up_kb_per_client']:.0f} |" for b in dump["bytes"]]
    (args.out / "bench.json").write_text(json.dumps(dump | {"threads": args.threads}, indent=2,
                                                    default=float))
    (args.out / "bench.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
