"""PNG plots of a bench results folder (matplotlib, Agg backend), redrawable from disk.

- ``valid_<dataset>.png``: validation NDCG@10 per round of each federated method (mean over
  seeds) with each central method's best validation NDCG@10 as a horizontal line;
- ``bytes_<dataset>.png``: validation NDCG@10 against cumulative bytes (up + down) per round
  of each federated method;
- ``clients_<dataset>.png``: test NDCG@10 (mean over seeds) against the number of clients
  (nodes x clients per node) of each federated algorithm, one line per algorithm over the bench
  methods that differ only in how many clients share the data; central methods as lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from florec.server.results import read_results
from florec.sim.bench import label_folder

METRIC = "ndcg@10"


def read_rounds(cell_dir: Path) -> list[dict[str, Any]]:
    """The rounds.jsonl rows of one cell (empty if missing)."""
    path = Path(cell_dir) / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def federated_curves(out: Path, dataset: str, label: str,
                     seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds, mean validation NDCG@10 and mean cumulative bytes over seeds of one method."""
    per_seed: list[dict[int, tuple[float, float]]] = []
    for s in seeds:
        cell = out / "cells" / dataset / label_folder(label) / f"seed{s}"
        rows, total, curve = read_rounds(cell), 0.0, {}
        for row in rows:
            total += row.get("bytes_up", 0) + row.get("bytes_down", 0)
            if METRIC in row.get("valid", {}):
                curve[row["round"]] = (row["valid"][METRIC], total)
        if curve:
            per_seed.append(curve)
    rounds = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
    vals = np.array([[c[r][0] for c in per_seed] for r in rounds]).reshape(len(rounds), -1)
    byts = np.array([[c[r][1] for c in per_seed] for r in rounds]).reshape(len(rounds), -1)
    return np.array(rounds), vals.mean(axis=1), byts.mean(axis=1)


def clients_of(cell_dir: Path) -> int | None:
    """Clients of a federated cell: its nodes x ``clients-per-node`` (None if unknown)."""
    try:
        run = read_results(cell_dir)["runs"][0]
        config = json.loads((Path(cell_dir) / "config.json").read_text())["config"]
    except (OSError, KeyError, IndexError, json.JSONDecodeError):
        return None
    nodes = run.get("num_nodes")
    return None if nodes is None else int(nodes) * int(config.get("clients-per-node", 1))


def accuracy_by_clients(out: Path, runs: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Algorithm -> {number of clients: mean test NDCG@10 over seeds} of federated runs."""
    points: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        if r["setting"] != "federated" or METRIC not in r.get("metrics", {}):
            continue
        n = clients_of(out / "cells" / r["dataset"] / label_folder(r["label"])
                       / f"seed{r['seed']}")
        if n is not None:
            points.setdefault(r["method"], {}).setdefault(n, []).append(r["metrics"][METRIC])
    return {m: {n: float(np.mean(v)) for n, v in sorted(d.items())} for m, d in points.items()}


def central_lines(ax: Any, runs: list[dict[str, Any]], labels: list[str], key: str,
                  first_color: int) -> None:
    """One dashed horizontal line per central method: its mean ``runs[...][key][METRIC]``."""
    for i, lab in enumerate(labels):
        v = np.mean([r[key].get(METRIC, np.nan) for r in runs if r["label"] == lab])
        ax.axhline(v, ls="--", lw=1, color=f"C{(first_color + i) % 10}", label=f"{lab} (central)")


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(out: Path) -> list[Path]:
    """Draw every plot of the bench folder ``out`` into ``out/plots/``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    results = read_results(out)
    runs = results.get("runs", [])
    conf = results.get("config", {})
    labels = [m["label"] for m in conf.get("method", [])] or sorted({r["label"] for r in runs})
    datasets = conf.get("bench", {}).get("datasets") or sorted({r["dataset"] for r in runs})
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in datasets:
        ds_runs = [r for r in runs if r["dataset"] == ds]
        fed = [lab for lab in labels if any(r["label"] == lab and r["setting"] == "federated"
                                            for r in ds_runs)]
        cen = [lab for lab in labels if any(r["label"] == lab and r["setting"] == "central"
                                            for r in ds_runs)]
        curves = {lab: federated_curves(out, ds, lab, sorted({r["seed"] for r in ds_runs
                                                               if r["label"] == lab}))
                  for lab in fed}
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lab, (rounds, vals, _) in curves.items():
            if len(rounds):
                ax.plot(rounds, vals, marker="o", ms=3, label=lab)
        central_lines(ax, ds_runs, cen, "valid_metrics", first_color=len(fed))
        ax.set(xlabel="round", ylabel=f"validation {METRIC}", title=f"{ds}: {METRIC} per round")
        ax.legend(fontsize=7)
        written.append(save(fig, plots / f"valid_{ds}.png"))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lab, (rounds, vals, byts) in curves.items():
            if len(rounds):
                ax.plot(np.maximum(byts, 1) / 2**20, vals, marker="o", ms=3, label=lab)
        ax.set_xscale("log")
        ax.set(xlabel="cumulative MiB (up + down)", ylabel=f"validation {METRIC}",
               title=f"{ds}: accuracy vs bytes")
        if curves:
            ax.legend(fontsize=7)
        written.append(save(fig, plots / f"bytes_{ds}.png"))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method, by_n in accuracy_by_clients(out, ds_runs).items():
            ax.plot(list(by_n), list(by_n.values()), marker="o", label=method)
        central_lines(ax, ds_runs, cen, "metrics", first_color=len(fed))
        ax.set_xscale("log")
        ax.set(xlabel="clients (nodes x clients per node)", ylabel=f"test {METRIC}",
               title=f"{ds}: accuracy vs number of clients")
        ax.legend(fontsize=7)
        written.append(save(fig, plots / f"clients_{ds}.png"))
    return written
