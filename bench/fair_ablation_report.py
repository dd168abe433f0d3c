"""Rebuild ``docs/results/fair_ablation/report.md`` from the cells of ``bench/fair_ablation.py``.

Reads only ``<results>/<variant>/<loss>/seed<s>/{results.json,rounds.jsonl}``; variants follow
``bench/fair_ablation.toml``. For each variant it lists BPR and FS-Pair at their best validation
epoch under FloRec's test protocol and the authors' (``authors/`` keys), then the verdict of the
issue's criterion: FS-Pair's recall@20 at least BPR's minus one standard deviation (over the
seeds run; 0 with one seed) **and** FS-Pair's ARP@20 at most half of BPR's.

Usage::

    python bench/fair_ablation_report.py [--results docs/results/fair_ablation]
        [--config bench/fair_ablation.toml] [--out docs/results/fair_ablation/report.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError
from florec.server.results import read_results

BENCH = Path(__file__).resolve().parent
LOSSES = {"bpr": "BPR", "fs-pair": "FS-Pair"}
K = 20


def _variants(config: Path) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("fair_ablation", BENCH / "fair_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.variants(config)


def runs_of(results: Path, label: str, loss: str) -> list[dict[str, Any]]:
    """The finished runs of one (variant, loss), one per seed folder, in seed order."""
    out = []
    for folder in sorted((results / label / loss).glob("seed*"),
                         key=lambda p: int(p.name.removeprefix("seed"))):
        path = folder / "results.json"
        if path.exists():
            doc = read_results(path)
            if doc.get("status", "finished") != "running":
                out.append(doc["runs"][0])
    return out


def _stat(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    vals = [r["metrics"][key] for r in runs]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(runs: list[dict[str, Any]], key: str, digits: int = 4) -> str:
    mean, sd = _stat(runs, key)
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if len(runs) > 1 else "")


def verdict(bpr: list[dict[str, Any]], fsp: list[dict[str, Any]], prefix: str = "") -> str:
    r"""The issue's criterion on one protocol.

    Reproduced when :math:`\bar r_{FS} \ge \bar r_{BPR} - sd_{BPR}` (recall@20) and
    :math:`\overline{ARP}_{FS} \le \overline{ARP}_{BPR} / 2`.
    """
    (r_b, sd_b), (r_f, _) = _stat(bpr, f"{prefix}recall@{K}"), _stat(fsp, f"{prefix}recall@{K}")
    a_b, a_f = _stat(bpr, f"{prefix}arp@{K}")[0], _stat(fsp, f"{prefix}arp@{K}")[0]
    ok = r_f >= r_b - sd_b and a_f <= a_b / 2
    return (f"{'yes' if ok else 'no'} (recall {r_f - r_b:+.4f}, ARP x{a_f / a_b:.2f})")


def paired_gap(bpr: list[dict[str, Any]], fsp: list[dict[str, Any]], prefix: str = "") -> str:
    r"""FS-Pair minus BPR recall@20 paired by seed: :math:`\bar d \pm sd(d)` and the seeds ahead.

    :math:`d_s = r_{FS,s} - r_{BPR,s}` over the seeds both losses ran; no significance test.
    """
    key = f"{prefix}recall@{K}"
    by_seed = {r["seed"]: r["metrics"][key] for r in bpr}
    gaps = [r["metrics"][key] - by_seed[r["seed"]] for r in fsp if r["seed"] in by_seed]
    if not gaps:
        return "-"
    sd = f" ± {statistics.stdev(gaps):.4f}" if len(gaps) > 1 else ""
    return (f"{statistics.fmean(gaps):+.4f}{sd}, ahead in {sum(g > 0 for g in gaps)}/"
            f"{len(gaps)}")


def build(results: Path, config: Path) -> str:
    """The report's markdown.

    Raises
    ------
    ConfigError
        No variant of ``config`` has finished cells under ``results``.

    """
    rows, verdicts, notes = [], [], []
    for v in _variants(config):
        cells = {loss: runs_of(results, v["label"], loss) for loss in LOSSES}
        if not any(cells.values()):
            continue
        notes.append(f"- `{v['label']}`: {v.get('note', '')}")
        for loss, runs in cells.items():
            if not runs:
                continue
            best = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in runs)
            capped = any(r["best_epoch"] == r["max_epochs"] or r.get("stopped") for r in runs)
            rows.append(
                f"| {v['label']} | {LOSSES[loss]} | {len(runs)} | {_fmt(runs, f'recall@{K}')} | "
                f"{_fmt(runs, f'ndcg@{K}')} | {_fmt(runs, f'arp@{K}', 0)} | "
                f"{_fmt(runs, f'coverage@{K}', 2)} | {_fmt(runs, f'authors/recall@{K}')} | "
                f"{_stat(runs, f'authors/arp@{K}')[0] * K:.0f} | {best}"
                f"{' (cap)' if capped else ''} |")
        if cells["bpr"] and cells["fs-pair"]:
            b, f = cells["bpr"], cells["fs-pair"]
            verdicts.append(f"| {v['label']} | {verdict(b, f)} | {verdict(b, f, 'authors/')} | "
                            f"{paired_gap(b, f)} | {paired_gap(b, f, 'authors/')} |")
    if not rows:
        raise ConfigError(f"no finished cells under {results}; run `python bench/fair_ablation.py "
                          f"--config {config} --out {results}` first")
    head = [
        "# Fair Sampling ablation on ML-1M: measured numbers",
        "",
        "Generated by `python bench/fair_ablation_report.py` from the cells of",
        "`bench/fair_ablation.toml` (`<variant>/<loss>/seed<s>/results.json`, written by",
        "`bench/fair_ablation.py`); do not edit by hand. CPU, one torch thread, on a 2-core box",
        "shared by 5 engineers. Test metrics at the best validation recall@20 epoch (early",
        "stopping); `± sd` over seeds where more than one ran.",
        "",
        "Variants (each switches one thing; `bench/fair_ablation.toml`):",
        "",
        *notes,
        "",
        "Columns: recall/ndcg/ARP/coverage@20 under FloRec's protocol (train and valid items",
        "masked; ARP = mean train count of the 20 listed items); `authors recall@20` under the",
        "authors' (only train items masked, truth on items seen in train) and `authors ARP sum`",
        "= 20 x their mean ARP (the authors' table's form). `best/ran` = best validation epoch /",
        "epochs run per seed; `(cap)` marks a run whose best epoch is its cap or that hit its time",
        "budget.",
        "",
        "| variant | loss | seeds | recall@20 | ndcg@20 | ARP@20 | coverage@20 | authors recall@20 "
        "| authors ARP sum | best/ran |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    tail = [
        "",
        "## Ordering criterion",
        "",
        "Issue 15: FS-Pair's recall@20 at least BPR's minus one sd (0 with one seed) and its",
        "ARP@20 at most half of BPR's. `recall` = FS-Pair minus BPR; `ARP x` = FS-Pair / BPR.",
        "`paired gap` = FS-Pair minus BPR recall@20 seed by seed, mean ± sd over the seeds both",
        "ran, and in how many FS-Pair is ahead (no significance test).",
        "",
        "| variant | FloRec protocol | authors' protocol | paired gap (FloRec) "
        "| paired gap (authors') |",
        "|---|---|---|---|---|",
        *verdicts,
    ]
    return "\n".join(head + rows + tail + cold_section(results)) + "\n"


def cold_section(results: Path) -> list[str]:
    """Lines on the items with no train row, from ``split_stats.json`` (none if it is absent)."""
    path = results / "split_stats.json"
    if not path.exists():
        return []
    rows = [f"| {r['data']} | {r['split']} | {r.get('min-train', 0)} | {r['seed']} | "
            f"{r['cold-items']:,} / {r['items']:,} "
            f"({r['cold-items'] / r['items']:.1%}) | {r['cold-test-rows']:,} / "
            f"{r['test-rows']:,} ({r['cold-test-rows'] / r['test-rows']:.1%}) |"
            for r in json.loads(path.read_text())]
    return [
        "",
        "## Items with no train row",
        "",
        "`split_stats.json` (`python bench/fair_ablation.py --split-stats --seeds 0,1,2`): the",
        "debiased split sends every item with popularity <= c wholly to test, so it changes",
        "training too. FloRec's protocol counts the test rows on those items; the authors' drops",
        "them from the truth. `min-train` = k returns test (then valid) rows to train until every",
        "item has k train rows.",
        "",
        "| data | split | min-train | seed | items with no train row | test rows on them |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> None:
    """Write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=BENCH.parent / "docs/results/fair_ablation")
    ap.add_argument("--config", type=Path, default=BENCH / "fair_ablation.toml")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or args.results / "report.md"
    out.write_text(build(args.results, args.config))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
