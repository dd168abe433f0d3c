"""Poisoning attacks x defenses on FedAvg-MF: ER@10 of the targets, accuracy, bytes.

Reads a grid config (``bench/attacks.toml``): a base run config, per-attack overrides and grids
of (attack, attack-fraction, defense) cells, each run once per seed in process (the real
ServerApp loop and ClientApp handlers over :class:`florec.sim.local_grid.LocalGrid`, no Ray).
Each cell's summary goes to ``OUT/cells/<cell>.json``: the test metrics at the best validation
round (ndcg@10, ER@K and the targets' mean rank among benign users who never interacted with
them), the per-round validation curve, bytes up, the target items and the malicious users
(chosen by seed, :func:`florec.client.attacks.malicious_users`). A cell whose JSON exists is
not run again, so an interrupted bench resumes. ``OUT/summary.md``, ``OUT/attacks.png`` and
``OUT/attacks_grid.png`` (:mod:`attacks_plot`) are then drawn from the cell files alone
(``--report-only`` redraws them).

Usage: FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/attacks.py
       --config bench/attacks.toml --out docs/results/attacks [--report-only] [--grids main]
       [--seeds 1] [--cells '*-median-s2']
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from florec.client.attacks import knowledge_from_split
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks_plot import (  # noqa: E402 (bench/attacks_plot.py)
    mean_metric,
    ordered_defenses,
    plot_attack_grid,
    plot_fedrecattack,
    sd_metric,
)

CURVE_KEYS = ("ndcg@10", "er@10", "er@20", "target-rank@all")
#: FedCIA's server-side upload norms and the norm bound's clipping, when a round has them
TRAIN_KEYS = ("upload-norm-median", "upload-norm-max", "norm-bound", "clipped-replies")


def cells(spec: dict[str, Any], grids: set[str] | None = None) -> list[dict[str, Any]]:
    """Every (grid, attack, fraction, defense, seed) cell of a bench config."""
    out = []
    for grid in spec["grid"]:
        if grids and grid["name"] not in grids:
            continue
        for seed in grid.get("seeds", spec["bench"]["seeds"]):  # a grid may run fewer seeds
            for attack in grid["attacks"]:
                for fraction in grid["fractions"]:
                    for defense in grid["defenses"]:
                        name = f"{attack}-f{fraction:g}-{defense}-s{seed}"
                        if "config" in grid:  # a grid with its own run config (e.g. FedCIA)
                            name = f"{grid['name']}-{name}"
                        out.append({"cell": name, "grid": grid["name"], "attack": attack,
                                    "fraction": fraction, "defense": defense, "seed": seed,
                                    "grid_config": grid.get("config", {})})
    return out


def cell_config(spec: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The run config of one cell: base, attack overrides, the grid's config, the cell's keys."""
    return dict(spec["base"]) | spec.get("attack", {}).get(cell["attack"], {}) \
        | cell["grid_config"] | {
        "dataset": spec["bench"]["dataset"], "seed": cell["seed"], "attack": cell["attack"],
        "attack-fraction": cell["fraction"], "defense": cell["defense"]}


def run_cell(spec: dict[str, Any], cell: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one cell (unless its JSON exists) and return its summary."""
    path = out / "cells" / f"{cell['cell']}.json"
    if path.exists():
        return json.loads(path.read_text())
    config = cell_config(spec, cell)
    cfg = parse_run_config(config)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, None, cfg.min_rating)
    know = knowledge_from_split(cfg, split)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False),
                               cfg, Path(tmp) / "run")
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "rounds.jsonl").read_text()
                .splitlines()]
    summary = cell | {
        "config": config, "metrics": result["metrics"], "best_round": result["best_round"],
        "bytes_up": result["bytes_up"], "rounds_run": max(r["round"] for r in rows),
        "wall_s": time.perf_counter() - t0,
        "targets": know.targets.tolist(), "target_popularity":
            know.popularity[know.targets].tolist(), "malicious": know.malicious.tolist(),
        "curve": [{"round": r["round"]} | {k: r["valid"].get(k) for k in CURVE_KEYS}
                  | {k: v for k, v in r.get("train", {}).items() if k in TRAIN_KEYS}
                  for r in rows if "valid" in r]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _rounds(run: dict[str, Any]) -> int:
    """Rounds a cell ran, the divisor of its MB per round.

    ``rounds_run`` (the last round of its ``rounds.jsonl``) where the cell records it; an older
    cell: its config's ``num-rounds``, or its last validated round when it sets ``patience``
    (an early stop ends on a validated round) or names no ``num-rounds``. Not the last
    validated round alone: with ``eval-every`` not dividing ``num-rounds`` the rounds after it
    also uploaded.
    """
    if "rounds_run" in run:
        return int(run["rounds_run"])
    config = run.get("config", {})
    if "num-rounds" in config and not config.get("patience"):
        return int(config["num-rounds"])
    return max(c["round"] for c in run["curve"])


def _last_er(run: dict[str, Any]) -> float:
    """ER@10 of the last validation round that evaluated any user (a diverged model: none)."""
    return [c["er@10"] for c in run["curve"] if c["er@10"] is not None][-1]


def report(spec: dict[str, Any], out: Path) -> str:
    """``summary.md`` (tables) and ``attacks.png`` from the cell files of ``out``."""
    done = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    by: dict[tuple, list[dict[str, Any]]] = {}
    for c in done:
        method = "FedCIA-MF" if c["config"].get("algorithm") == "fedcia" else \
            "FedAvg-SASRec" if c["config"].get("model") == "sasrec" else "FedAvg-MF"
        if c.get("grid_config"):  # a grid with its own run config is its own row
            method += f" [{c['grid']}]"
        by.setdefault((method, c["attack"], c["fraction"], c["defense"]), []).append(c)
    seeds = sorted({c["seed"] for c in done})
    lines = [f"# Poisoning attacks on FedAvg-MF ({spec['bench']['dataset']})", "",
             f"Generated by `bench/attacks.py` (bench `{spec['bench'].get('name', 'attacks')}`; "
             "cells under `cells/`).",
             f"Seeds: {seeds} (the `seeds` column: runs pooled in the row; sd over them). "
             "Test metrics at the best validation round (by ndcg@10); ER@K and "
             "the target rank over benign users who never interacted with the targets; "
             "`ER@10 last round` is the last round's (the best-ndcg round of an attacked run "
             "tends to be a low-exposure one; a run whose model diverged, so that no node "
             "could evaluate its last rounds, gives its last evaluated round's).", "",
             "| method | attack | malicious | defense | seeds | ER@10 | ER@10 sd | ER@20 | "
             "target rank | ndcg@10 | ndcg@10 sd | ER@10 last round | MB up / round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, attack, fraction, defense), runs in sorted(by.items(), key=lambda kv: (
            kv[0][0], kv[0][1] != "none", kv[0][1], kv[0][2], kv[0][3])):
        mb = statistics.mean(r["bytes_up"] / _rounds(r) / 2**20 for r in runs)
        users = len(runs[0]["malicious"])
        lines.append(f"| {method} | {attack} | {fraction:.1%} ({users} users) | {defense} | "
                     f"{len(runs)} | {mean_metric(runs, 'er@10'):.3f} | "
                     f"{sd_metric(runs, 'er@10'):.3f} | {mean_metric(runs, 'er@20'):.3f} | "
                     f"{mean_metric(runs, 'target-rank@all'):.0f} | "
                     f"{mean_metric(runs, 'ndcg@10'):.4f} | "
                     f"{sd_metric(runs, 'ndcg@10'):.4f} | "
                     f"{statistics.mean(_last_er(r) for r in runs):.3f} | "
                     f"{mb:.2f} |")
    text = "\n".join(lines + [""] + pivot(by)) + "\n"
    (out / "summary.md").write_text(text)
    plot_fedrecattack(by, out / "attacks.png")
    plot_attack_grid(by, out / "attacks_grid.png")
    return text


def _cell(runs: list[dict[str, Any]]) -> str:
    """``ER@10 / ndcg@10`` of a cell, each ``mean ± sd`` over seeds when there are several."""
    if len(runs) == 1:
        return f"{mean_metric(runs, 'er@10'):.3f} / {mean_metric(runs, 'ndcg@10'):.4f} (1)"
    return (f"{mean_metric(runs, 'er@10'):.3f} ± {sd_metric(runs, 'er@10'):.3f} / "
            f"{mean_metric(runs, 'ndcg@10'):.4f} ± {sd_metric(runs, 'ndcg@10'):.4f} ({len(runs)})")


def pivot(by: dict[tuple, list[dict[str, Any]]]) -> list[str]:
    """Markdown lines of one attack x defense table per method.

    Rows are (attack, malicious share), columns the defenses; each cell is the test
    ``ER@10 / ndcg@10`` (mean ± sample sd over seeds) and, in brackets, the number of seeds.
    """
    lines: list[str] = []
    for method in sorted({k[0] for k in by}):
        cells = {k[1:]: v for k, v in by.items() if k[0] == method}
        defenses = ordered_defenses({d for (_, _, d) in cells})
        lines += [f"## {method}: ER@10 / ndcg@10 (seeds)", "",
                  "| attack | malicious | " + " | ".join(defenses) + " |",
                  "|---|---|" + "---|" * len(defenses)]
        for attack, fraction in sorted({(a, f) for (a, f, _) in cells},
                                       key=lambda af: (af[0] != "none", af[0], af[1])):
            row = [_cell(cells[(attack, fraction, d)]) if (attack, fraction, d) in cells
                   else "-" for d in defenses]
            lines.append(f"| {attack} | {fraction:.1%} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def selected(todo: list[dict[str, Any]], seeds: str = "", patterns: str = ""
             ) -> list[dict[str, Any]]:
    """The cells to run: of the given seeds, with a name that matches one of the patterns.

    ``seeds`` and ``patterns`` (shell patterns of cell names) are comma-separated; an empty one
    selects everything, so that several processes can share a grid.
    """
    if seeds:
        todo = [c for c in todo if str(c["seed"]) in seeds.split(",")]
    if patterns:
        todo = [c for c in todo
                if any(fnmatch.fnmatchcase(c["cell"], p) for p in patterns.split(","))]
    return todo


def main() -> None:
    """Run the missing cells of the config, then write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("bench/attacks.toml"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/attacks"))
    parser.add_argument("--grids", default="", help="comma-separated grid names (default all)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds to run (default all)")
    parser.add_argument("--cells", default="", help="comma-separated shell patterns of cell "
                        "names to run (e.g. '*-median-s2'; default all)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    spec = tomllib.loads(args.config.read_text())
    if not args.report_only:
        if not os.environ.get("FLOREC_DATA_DIR"):
            raise SystemExit("set FLOREC_DATA_DIR to the folder holding ml-100k/")
        todo = selected(cells(spec, set(args.grids.split(",")) - {""} or None), args.seeds,
                        args.cells)
        for i, cell in enumerate(todo, 1):
            summary = run_cell(spec, cell, args.out)
            print(f"[{i}/{len(todo)}] {cell['cell']}: er@10={summary['metrics']['er@10']:.3f} "
                  f"ndcg@10={summary['metrics']['ndcg@10']:.4f}", flush=True)
    print(report(spec, args.out))


if __name__ == "__main__":
    main()
