"""Federated MF vs central MF-BPR: test ndcg@10, share of central, rounds and bytes, per method.

Reads a bench ``results.json`` (e.g. ``docs/results/fedmf_converge/results.json`` written by
``florec bench --config bench/fedmf_converge.toml``) and writes one markdown row per method:
n seeds, test ndcg@10 and recall@20 (mean ± sample sd), the mean ndcg@10 as a share of the
reference method's mean (``share = mean_method / mean_reference``; the goal of issue 15 is
>= 95%), the best round/epoch and the rounds/epochs run per seed, and the bytes a run moved
(down and up, MB = 1e6 bytes, mean over seeds, whole run including the patience rounds).

``--curves FOLDER`` instead lists each cell's validation ndcg@10 per round from the cells'
``rounds.jsonl`` (the short tuning runs in ``docs/results/fedmf_converge/tuning/``).

``--config BENCH.toml`` reads the finished cells of a bench folder instead of its
``results.json`` (the same collection ``florec bench`` writes at its end), so a bench stopped
before its last cell still gets its table; unfinished cells are left out.

Usage::

    python bench/fedmf_report.py docs/results/fedmf_converge/results.json
        --out docs/results/fedmf_converge/summary.md
    python bench/fedmf_report.py --curves docs/results/fedmf_converge/tuning
    python bench/fedmf_report.py docs/results/fedmf_converge_ml1m
        --config bench/fedmf_converge_ml1m.toml
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary_table import groups, mean_sd  # noqa: E402

from florec.recdata.errors import ConfigError  # noqa: E402


def report(results: dict[str, Any], metric: str = "ndcg@10") -> str:
    """The markdown table (see the module docstring).

    Raises
    ------
    ConfigError
        If the bench has no reference method or a run lacks ``metric``.

    """
    ref_label = results.get("config", {}).get("bench", {}).get("reference")
    grouped = groups(results)
    head = ["dataset", "method", "setting", "n", f"test {metric}", "test recall@20",
            f"share of {ref_label}", "best epoch/round", "epochs/rounds run",
            "MB down per run", "MB up per run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, lab), runs in grouped.items():
        if (ds, ref_label) not in grouped:
            raise ConfigError(f"bench reference '{ref_label}' has no runs on {ds}; set "
                              "[bench] reference to a method label of the config")
        if any(metric not in r["metrics"] for r in runs):
            raise ConfigError(f"{lab} on {ds} has no {metric}")
        ref = statistics.mean(r["metrics"][metric] for r in grouped[(ds, ref_label)])
        share = statistics.mean(r["metrics"][metric] for r in runs) / ref
        mb = [statistics.mean(r.get(k, 0) for r in runs) / 1e6 for k in ("bytes_down", "bytes_up")]
        lines.append("| " + " | ".join([
            ds, lab, runs[0]["setting"], str(len(runs)),
            mean_sd([r["metrics"][metric] for r in runs]),
            mean_sd([r["metrics"]["recall@20"] for r in runs]), f"{100 * share:.1f}%",
            ", ".join(str(r["best_round"]) for r in runs),
            ", ".join(str(r["rounds"]) for r in runs), f"{mb[0]:.0f}", f"{mb[1]:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def curves(folder: Path, metric: str = "ndcg@10") -> str:
    """One markdown row per cell under ``folder/**/rounds.jsonl``: validation ``metric`` by round.

    Columns: the cell (method label folder and seed), rounds run, the best value and its round,
    and the values of every round (4 decimals).
    """
    lines = [f"| cell | rounds | best valid {metric} (round) | valid {metric} per round |",
             "|---|---|---|---|"]
    for path in sorted(folder.rglob("rounds.jsonl")):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        values = [(r["round"], r["valid"][metric]) for r in rows if metric in r.get("valid", {})]
        if not values:
            continue
        best = max(values, key=lambda rv: rv[1])
        cell = f"{path.parent.parent.name} {path.parent.name}"
        lines.append(f"| {cell} | {len(rows)} | {best[1]:.4f} ({best[0]}) | "
                     + " ".join(f"{v:.4f}" for _, v in values) + " |")
    return "\n".join(lines) + "\n"


def from_cells(config: Path, folder: Path) -> dict[str, Any]:
    """The bench ``results.json`` dict of ``folder``'s finished cells under bench file ``config``.

    Raises
    ------
    ConfigError
        If ``config`` is not a valid bench file or no cell of it has finished in ``folder``.

    """
    from florec.sim.bench import cells_of, collect, load_bench

    conf = load_bench(config)
    results = collect(conf, cells_of(conf, folder))
    if not results["runs"]:
        raise ConfigError(f"no cell of {config} has finished in {folder}; run florec bench "
                          f"--config {config} --out {folder} first")
    return results


def main() -> None:
    """Command line: print the table or write it to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="?",
                    help="a bench results.json (with --config: the bench folder)")
    ap.add_argument("--config", type=Path, default=None,
                    help="a bench TOML: read the folder's finished cells, not results.json")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--curves", type=Path, default=None, help="a folder of bench cells")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.curves is not None:
        text = curves(args.curves, args.metric)
    elif args.results is not None and args.config is not None:
        text = report(from_cells(args.config, args.results), args.metric)
    elif args.results is not None:
        text = report(json.loads(args.results.read_text()), args.metric)
    else:
        raise ConfigError("give a bench results.json or --curves FOLDER")
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
