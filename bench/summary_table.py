"""A per-method summary table from a bench ``results.json``: chosen metrics, best and run rounds.

Used for ``docs/results/sequential/summary.md`` (hr, ndcg and mrr at 10, which the bench report
does not show). One row per (dataset, label) in the bench config's order: n seeds, each metric
as mean ± sample sd (ddof=1) over seeds (the plain value for one seed), the best epoch/round and
the epochs/rounds run per seed, and mean over seeds of wall seconds / epochs or rounds run
(evaluation included).

Usage::

    python bench/summary_table.py docs/results/sequential/results.json
        --metrics hr@10,ndcg@10,mrr@10 --out docs/results/sequential/summary.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sample sd, 4 decimals), or the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def groups(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Runs grouped by (dataset, label), datasets and labels in the config's order."""
    conf = results.get("config", {})
    datasets = conf.get("bench", {}).get("datasets") or sorted({r["dataset"] for r in
                                                                results["runs"]})
    labels = [m["label"] for m in conf.get("method", [])]
    labels += sorted({r["label"] for r in results["runs"]} - set(labels))
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ds in datasets:
        for lab in labels:
            runs = sorted((r for r in results["runs"] if r["dataset"] == ds and r["label"] == lab),
                          key=lambda r: r["seed"])
            if runs:
                out[(ds, lab)] = runs
    return out


def summary(results: dict[str, Any], metrics: list[str]) -> str:
    """The markdown table.

    Raises
    ------
    ConfigError
        If a run lacks one of ``metrics``.

    """
    head = ["dataset", "method", "setting", "n", *metrics, "best epoch/round",
            "epochs/rounds run", "wall s per epoch/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, lab), runs in groups(results).items():
        missing = [m for m in metrics if any(m not in r["metrics"] for r in runs)]
        if missing:
            raise ConfigError(f"{lab} on {ds} has no {missing}; choose --metrics among "
                              f"{sorted(runs[0]['metrics'])}")
        cells = [mean_sd([r["metrics"][m] for r in runs]) for m in metrics]
        seconds = statistics.mean(r["wall_s"] / max(r["rounds"], 1) for r in runs)
        lines.append("| " + " | ".join([
            ds, lab, runs[0]["setting"], str(len(runs)), *cells,
            ", ".join(str(r["best_round"]) for r in runs),
            ", ".join(str(r["rounds"]) for r in runs), f"{seconds:.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: print the table or write it to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a bench results.json")
    ap.add_argument("--metrics", default="hr@10,ndcg@10,mrr@10")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    text = summary(json.loads(args.results.read_text()), args.metrics.split(","))
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
