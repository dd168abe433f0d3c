"""Privacy-utility curve of user-level DP-FedAvg-MF: test ndcg@10 against epsilon.

Reads the results of ``florec bench --config bench/dp_curve.toml --out docs/results/dp`` (one
federated cell per target epsilon, plus the non-private run and the popularity baseline) and
writes ``summary.json``, ``summary.md`` (the table on docs/privacy.md) and ``dp_curve.png``.
The same for ML-1M (``bench/dp_curve_ml1m.toml``, ``docs/results/dp_ml1m``). With ``--sweep``
it tabulates a tuning sweep instead (``bench/dp_curve_ml1m_sweep.toml``): VALIDATION ndcg@10
at the best round with each cell's q, T and C, and no plot.

Run: python bench/dp_curve.py docs/results/dp/results.json --out docs/results/dp
     python bench/dp_curve.py --sweep docs/results/dp_ml1m/sweep/results.json \
       --out docs/results/dp_ml1m/sweep
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any


def rows_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method label: target and reached epsilon, z and test metrics over seeds."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        by_label.setdefault(run["label"], []).append(run)
    rows = []
    for method in results["config"]["method"]:
        runs = by_label.get(method["label"], [])
        if not runs:
            continue
        ndcg = [r["metrics"]["ndcg@10"] for r in runs]
        dp = runs[0].get("dp") or {}
        rows.append({
            "label": method["label"], "seeds": len(runs),
            "target_epsilon": method.get("dp-epsilon") or (math.inf if method.get("dp") else None),
            "epsilon": dp.get("epsilon"), "delta": dp.get("delta"),
            "noise_multiplier": dp.get("noise_multiplier"), "rounds": dp.get("rounds"),
            "ndcg@10": mean(ndcg), "ndcg@10_std": stdev(ndcg) if len(ndcg) > 1 else 0.0,
            "recall@10": mean(r["metrics"]["recall@10"] for r in runs),
            "best_round": [r["best_round"] for r in runs],
            "wall_s": mean(r["wall_s"] for r in runs)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`rows_of`."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else ("inf" if v == math.inf else format(v, fmt))

    lines = ["| method | target epsilon | epsilon reached (delta) | noise multiplier | "
             "test ndcg@10 (std over seeds) | test recall@10 | best round per seed | wall s |",
             "|---" * 8 + "|"]
    for r in rows:
        delta = f" ({r['delta']:.1e})" if r["delta"] else ""
        spread = f"{r['ndcg@10_std']:.4f}" if r["seeds"] > 1 else "1 seed"
        lines.append(f"| {r['label']} | {num(r['target_epsilon'], '.0f')} | "
                     f"{num(r['epsilon'], '.2f')}{delta} | {num(r['noise_multiplier'], '.3f')} | "
                     f"{r['ndcg@10']:.4f} ({spread}) | {r['recall@10']:.4f} | "
                     f"{', '.join(str(b) for b in r['best_round'])} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def sweep_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sweep cell: q, T, C, local lr and schedule, server lr, user refit, valid."""
    defaults = results["config"]["defaults"]
    rows = []
    for run in results["runs"]:
        method = next(m for m in results["config"]["method"] if m["label"] == run["label"])
        keys = defaults | method
        dp = run.get("dp") or {}
        federated = method["setting"] == "federated"
        rows.append({
            "label": run["label"], "seed": run["seed"],
            "q": keys.get("cohort-fraction", 1.0) if federated else None,
            "rounds": keys.get("num-rounds") if federated else None,
            "clip": keys.get("dp-clip") if keys.get("dp") else None,
            "lr": keys.get("lr") if federated else None,
            "schedule": keys.get("lr-schedule", "constant") if federated else None,
            "refit": keys.get("user-refit-steps", 0) if federated else None,
            "server_lr": keys.get("server-lr", 1.0) if federated else None,
            "target_epsilon": keys.get("dp-epsilon") if keys.get("dp") else None,
            "noise_multiplier": dp.get("noise_multiplier"),
            "valid_ndcg@10": run["valid_metrics"]["ndcg@10"], "best_round": run["best_round"],
            "wall_s": run["wall_s"]})
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`sweep_rows` (validation only)."""
    def num(v: Any, fmt: str = "g") -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["| cell | q | rounds T | clip C | local lr | lr schedule | server lr | "
             "user refit steps | target epsilon | noise multiplier | VALID ndcg@10 | "
             "best round | wall s |", "|---" * 13 + "|"]
    for r in rows:
        lines.append(f"| {r['label']} | {num(r['q'])} | {num(r['rounds'])} | {num(r['clip'])} | "
                     f"{num(r['lr'])} | {num(r['schedule'], 's')} | {num(r['server_lr'])} | "
                     f"{num(r['refit'])} | {num(r['target_epsilon'])} | "
                     f"{num(r['noise_multiplier'], '.3f')} | {r['valid_ndcg@10']:.4f} | "
                     f"{r['best_round']} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test ndcg@10 against epsilon (log axis; no noise drawn at the right, baselines dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [r for r in rows if r["target_epsilon"] not in (None, math.inf)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["target_epsilon"] for r in private]
    ax.errorbar(xs, [r["ndcg@10"] for r in private], yerr=[r["ndcg@10_std"] for r in private],
                marker="o", label="DP-FedAvg-MF")
    for r, style in zip([r for r in rows if r["target_epsilon"] in (None, math.inf)],
                        ("--", ":", "-.", (0, (6, 2)), (0, (1, 3))), strict=False):
        name = r["label"] + (" (epsilon = inf)" if r["target_epsilon"] == math.inf else "")
        ax.axhline(r["ndcg@10"], linestyle=style, color="grey", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("epsilon (user level, delta = 1/users)")
    ax.set_ylabel("test ndcg@10")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Write summary.json, summary.md and dp_curve.png (or sweep.md) from a bench results.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sweep", action="store_true",
                        help="tabulate a tuning sweep on validation (sweep.md), no plot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        text = sweep_table(sweep_rows(json.loads(args.results.read_text())))
        (args.out / "sweep.md").write_text(text)
        print(text)
        return
    rows = rows_of(json.loads(args.results.read_text()))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (args.out / "summary.md").write_text(table(rows))
    plot(rows, args.out / "dp_curve.png")
    print(table(rows))


if __name__ == "__main__":
    main()
