"""report.md of a bench: per-dataset tables of mean ± sd over seeds, t-tests and a protocol card.

Follows evaluation.md §7: mean ± sample sd (ddof=1) with n and the mean best round; a paired
t-test over seeds (same seeds, same split) against the reference method on NDCG@10.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("recall", "ndcg", "precision", "f1", "arp")
#: metrics where lower is better (ARP: mean popularity of the recommended items)
LOWER_IS_BETTER = ("arp",)
#: The metric the paired t-test compares.
TEST_METRIC = "ndcg@10"
FORMULAS = (
    "recall@k = |top-k ∩ held-out| / |held-out|",
    "precision@k = |top-k ∩ held-out| / k",
    "f1@k = 2·P@k·R@k / (P@k + R@k) = 2·hits / (k + |held-out|), per user",
    "ndcg@k = Σ_{r≤k} rel(r) / log2(r+1) ÷ Σ_{r≤min(|held-out|,k)} 1 / log2(r+1)",
    "arp@k = (1/k) · Σ_{i∈top-k} pop_i, pop_i = train count of item i (lower: less popular "
    "items recommended; bold = lowest)",
    "per-user values averaged over users with ≥1 held-out item; train items (and validation "
    "items at test time) masked; ties broken by item id",
)


def metric_columns(runs: list[dict[str, Any]]) -> list[str]:
    """Metric columns: accuracy @10 always, anything else (@20, ARP) when some run has it."""
    present = {k for r in runs for k in r.get("metrics", {})}
    return [f"{m}@{k}" for k in (10, 20) for m in METRICS
            if f"{m}@{k}" in present or (k == 10 and m not in LOWER_IS_BETTER)]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof=1; nan for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def paired_p(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """Two-sided paired t-test p-value over the seeds both dicts hold, and that count."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return math.nan, len(seeds)
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    if np.allclose(x, y):
        return 1.0, len(seeds)
    return float(ttest_rel(x, y).pvalue), len(seeds)


def _fmt(mean: float, sd: float) -> str:
    if math.isnan(mean):  # the metric is not reported for this method (e.g. ARP without pop)
        return "n/a"
    return f"{mean:.4f} ± {sd:.4f}" if not math.isnan(sd) else f"{mean:.4f}"


def dataset_table(runs: list[dict[str, Any]], labels: list[str], reference: str) -> list[str]:
    """Markdown lines of one dataset's table."""
    cols = metric_columns(runs)
    by_label = {lab: [r for r in runs if r["label"] == lab] for lab in labels}
    by_label = {lab: rs for lab, rs in by_label.items() if rs}
    stats = {lab: {c: mean_sd([r["metrics"].get(c, math.nan) for r in rs]) for c in cols}
             for lab, rs in by_label.items()}
    best = {c: (np.nanmin if c.split("@")[0] in LOWER_IS_BETTER else np.nanmax)(
                [stats[lab][c][0] for lab in stats]) if stats else math.nan
            for c in cols}
    ref = {r["seed"]: r["metrics"].get(TEST_METRIC, math.nan) for r in by_label.get(reference, [])}
    head = ["method", "setting", *cols, "n", "best round", f"p vs {reference} ({TEST_METRIC})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab, rs in by_label.items():
        cells = []
        for c in cols:
            text = _fmt(*stats[lab][c])
            cells.append(f"**{text}**" if stats[lab][c][0] == best[c] else text)
        rounds = [r["best_round"] for r in rs if r.get("best_round") is not None]
        if lab == reference:
            p_text = "reference"
        else:
            p, n = paired_p({r["seed"]: r["metrics"].get(TEST_METRIC, math.nan) for r in rs}, ref)
            p_text = f"{p:.3g} (n={n})" if not math.isnan(p) else f"n/a (n={n})"
        lines.append("| " + " | ".join([lab, rs[0]["setting"], *cells, str(len(rs)),
                                        f"{np.mean(rounds):.1f}" if rounds else "-",
                                        p_text]) + " |")
    return lines


#: The flag of a run whose best validation epoch is its epoch cap (it may not have converged).
AT_CAP = "best at cap: raise max epochs"
AT_ROUND_CAP = "best at cap: raise num-rounds"
RAN_TO_CAP = "ran to the cap (no early stop)"


def convergence_table(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Markdown lines of best epoch vs epoch cap for the trained central runs (none: empty).

    A run counts when its entry has ``max_epochs > 0`` (written by
    :func:`florec.sim.central_loop.fit_and_select`). Per-seed values are listed in seed order;
    a method is flagged with :data:`AT_CAP` when any seed's best epoch equals its cap.
    """
    trained = [r for r in runs if (r.get("max_epochs") or 0) > 0]
    if not trained:
        return []
    lines = ["Convergence: best validation epoch vs the epoch cap, per seed.", "",
             "| method | cap | best epoch | epochs run | stopped early | flag |",
             "|---|---|---|---|---|---|"]
    for lab in labels:
        rs = sorted((r for r in trained if r["label"] == lab), key=lambda r: r["seed"])
        if not rs:
            continue
        caps = sorted({r["max_epochs"] for r in rs})
        at_cap = any(r.get("best_epoch") == r["max_epochs"] for r in rs)
        cells = [", ".join(str(r.get(k, "-")) for r in rs) for k in ("best_epoch", "epochs_run")]
        early = sum(bool(r.get("stopped_early")) for r in rs)
        lines.append(f"| {lab} | {', '.join(map(str, caps))} | {cells[0]} | {cells[1]} | "
                     f"{early}/{len(rs)} | {AT_CAP if at_cap else 'ok'} |")
    return lines + [""]


def round_caps(conf: dict[str, Any]) -> dict[str, int]:
    """Each federated method's ``num-rounds`` (its own, else ``[defaults]``'s), by label."""
    default = conf.get("defaults", {}).get("num-rounds")
    caps = {m["label"]: m.get("num-rounds", default) for m in conf.get("method", [])
            if m.get("setting") == "federated"}
    return {lab: int(cap) for lab, cap in caps.items() if cap is not None}


def federated_convergence_table(runs: list[dict[str, Any]], labels: list[str],
                                caps: dict[str, int]) -> list[str]:
    """Markdown lines of best round vs the round cap for federated runs of more than one round.

    A run stopped early when it ran fewer rounds than its cap (``patience`` fired). A method is
    flagged with :data:`AT_ROUND_CAP` when a seed's best round is its cap, and with
    :data:`RAN_TO_CAP` when a seed ran to the cap without an early stop.
    """
    lines = []
    for lab in labels:
        cap = caps.get(lab, 0)
        rs = sorted((r for r in runs if r["label"] == lab and r.get("setting") == "federated"),
                    key=lambda r: r["seed"])
        if cap <= 1 or not rs:
            continue
        best = ", ".join(str(r.get("best_round", "-")) for r in rs)
        ran = ", ".join(str(r.get("rounds", "-")) for r in rs)
        early = sum((r.get("rounds") or cap) < cap for r in rs)
        flag = (AT_ROUND_CAP if any(r.get("best_round") == cap for r in rs)
                else RAN_TO_CAP if early < len(rs) else "ok")
        lines.append(f"| {lab} | {cap} | {best} | {ran} | {early}/{len(rs)} | {flag} |")
    if not lines:
        return []
    return ["Federated convergence: best validation round vs the round cap, per seed.", "",
            "| method | cap | best round | rounds run | stopped early | flag |",
            "|---|---|---|---|---|---|", *lines, ""]


def protocol_card(results: dict[str, Any]) -> list[str]:
    """Markdown lines of the protocol card."""
    conf, runs, env = results.get("config", {}), results.get("runs", []), results.get("env", {})
    bench, defaults = conf.get("bench", {}), conf.get("defaults", {})
    splits = sorted({str(r.get("split")) for r in runs}) or [defaults.get("split", "loo")]
    pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    lines = [
        "## Protocol card", "",
        f"- datasets: {', '.join(bench.get('datasets', []))}",
        f"- split: {', '.join(splits)} (split-seed {defaults.get('split-seed', 0)}, fixed)",
        f"- selection metric: {defaults.get('selection-metric', 'ndcg@10')} on validation; "
        "test reported at the best validation round/epoch",
        f"- ks: {defaults.get('ks', '10,20')}",
        f"- seeds: {', '.join(str(s) for s in bench.get('seeds', []))} "
        "(initialisation, samplers, client sampling)",
        "- negatives: full ranking over all items (no sampled negatives)",
        f"- statistics: mean ± sample sd (ddof=1) over seeds; paired t-test (scipy ttest_rel) "
        f"over common seeds vs `{bench.get('reference', '')}` on {TEST_METRIC}",
        "- metrics:",
        *(f"  - {f}" for f in FORMULAS),
        f"- environment: Python {env.get('python')}, {pkgs}; commit {env.get('commit')}; "
        f"threads {env.get('threads')}",
    ]
    return lines


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` from a bench results dict; returns its path."""
    conf = results.get("config", {})
    bench = conf.get("bench", {})
    reference = bench.get("reference", "")
    labels = [m["label"] for m in conf.get("method", [])]
    runs = results.get("runs", [])
    labels += sorted({r["label"] for r in runs} - set(labels))
    datasets = list(bench.get("datasets", [])) or sorted({r["dataset"] for r in runs})
    lines = [f"# Benchmark: {bench.get('name', '')}", "",
             "Test metrics at the best validation round, mean ± sd over seeds; best mean in bold.",
             ""]
    for ds in datasets:
        ds_runs = [r for r in runs if r["dataset"] == ds]
        lines += [f"## {ds}", ""]
        lines += dataset_table(ds_runs, labels, reference) if ds_runs else ["(no finished runs)"]
        lines.append("")
        lines += convergence_table(ds_runs, labels)
        lines += federated_convergence_table(ds_runs, labels, round_caps(conf))
    if results.get("not_run"):
        lines += [f"**Not run ({len(results['not_run'])} cells; the tables above leave them "
                  "out):** " + ", ".join(f"`{n}`" for n in results["not_run"]), ""]
    lines += protocol_card(results)
    path = Path(out_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
