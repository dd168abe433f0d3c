r"""Oracle4Rec vs SASRec tuned with the same budget (issue 15 §4): the report.

Reads the cells that ``florec bench --config bench/oracle4rec_tuning_<tag>.toml --out
<out>/<tag>`` ran (``<out>/*/cells/<dataset>/<method>/seed<s>/{cell.json,results.json}``) and
writes ``<out>/summary.md``:

1. per dataset, every seed-0 cell with its validation ndcg@10 (the selection metric), best and
   run epochs against the cap, and its test metrics; per family (``SASRec``: plain, with or
   without filter layers; ``Oracle4Rec``) the cell with the best validation is marked;
2. the finalists (methods with two or more seeds): test metrics as mean ± sample sd;
3. every pair of finalists: the mean paired test difference and the paired t-test p over their
   common seeds, and for each Oracle4Rec finalist with alpha > 0 its alpha = 0 twin (same
   settings otherwise), which isolates the oracle-guiding KL term.

Run (the tables in docs/methods/sequential.md come from this)::

    python bench/oracle4rec_tuning.py --out docs/results/oracle4rec_tuning
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from florec.server.results import read_results
from florec.sim.bench import cells_of, load_bench
from florec.sim.report import mean_sd, paired_p

#: the bench configs, one per dataset: ``oracle4rec_tuning_<tag>.toml`` runs into ``<out>/<tag>``
CONFIGS = sorted(Path(__file__).resolve().parent.glob("oracle4rec_tuning_*.toml"))

#: the test metrics of the finalists' table
METRICS = ("ndcg@10", "hr@10", "mrr@10")
#: the selection metric (``selection-metric`` of the bench configs)
SELECTION = "ndcg@10"


def load_cells(out: Path) -> list[dict[str, Any]]:
    """Every finished cell under ``out/*/cells``: its label folder, settings, seed and run."""
    cells = []
    for path in sorted(out.glob("*/cells/*/*/seed*/results.json")):
        results = read_results(path)
        if results.get("status") != "finished":
            continue
        settings = json.loads((path.parent / "cell.json").read_text())
        run = results["runs"][0]
        cells.append({"label": path.parts[-3],  # the method's folder: its label, no spaces
                      "dataset": run["dataset"], "seed": int(run["seed"]),
                      "settings": settings, "run": run})
    return cells


def not_run(out: Path, configs: list[Path]) -> dict[str, list[str]]:
    """Per dataset, the ``label (seed s)`` cells of ``configs`` without a finished run."""
    missing: dict[str, list[str]] = defaultdict(list)
    for config in configs:
        conf = load_bench(config)
        tag = config.stem.removeprefix("oracle4rec_tuning_")
        for cell in cells_of(conf, out / tag):
            if not cell.finished(conf):
                missing[cell.dataset].append(f"{cell.label} (seed {cell.seed})")
    return missing


def family(settings: dict[str, Any]) -> str:
    """``Oracle4Rec`` for an oracle cell, else ``SASRec`` (plain, any filter layers)."""
    return "Oracle4Rec" if settings.get("oracle") else "SASRec"


def _cap(run: dict[str, Any]) -> str:
    best, ran, cap = run.get("best_epoch"), run.get("epochs_run"), run.get("max_epochs")
    flag = " (at cap)" if best == cap else ""
    return f"{best} / {ran} of {cap}{flag}"


def tuning_table(cells: list[dict[str, Any]]) -> list[str]:
    """Seed-0 cells of one dataset, best validation per family in bold."""
    seed0 = [c for c in cells if c["seed"] == 0]
    best = {}
    for c in seed0:
        fam = family(c["settings"])
        if fam not in best or c["run"]["valid_metrics"][SELECTION] > \
                best[fam]["run"]["valid_metrics"][SELECTION]:
            best[fam] = c
    lines = [f"| method | family | valid {SELECTION} | best / run epochs | test ndcg@10 | "
             "test hr@10 | wall s |", "|---|---|---|---|---|---|---|"]
    for c in sorted(seed0, key=lambda c: (family(c["settings"]),
                                          -c["run"]["valid_metrics"][SELECTION])):
        run, fam = c["run"], family(c["settings"])
        valid = f"{run['valid_metrics'][SELECTION]:.4f}"
        if best[fam] is c:
            valid = f"**{valid}** (chosen)"
        lines.append(f"| {c['label']} | {fam} | {valid} | {_cap(run)} | "
                     f"{run['metrics']['ndcg@10']:.4f} | {run['metrics']['hr@10']:.4f} | "
                     f"{run['wall_s']:.0f} |")
    return lines


def _by_label(cells: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    grouped: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for c in cells:
        grouped[c["label"]][c["seed"]] = c
    return grouped


def finalists_table(cells: list[dict[str, Any]]) -> list[str]:
    """Methods with two or more seeds: test metrics as mean ± sd."""
    lines = ["| method | n | " + " | ".join(f"test {m}" for m in METRICS) + " | best epochs |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for label, seeds in _finalists(cells).items():
        runs = [seeds[s]["run"] for s in sorted(seeds)]
        stats = [mean_sd([r["metrics"][m] for r in runs]) for m in METRICS]
        lines.append(f"| {label} | {len(runs)} | "
                     + " | ".join(f"{m:.4f} ± {sd:.4f}" for m, sd in stats)
                     + " | " + ", ".join(str(r.get("best_epoch")) for r in runs) + " |")
    return lines


def _twin_without_kl(settings: dict[str, Any], others: list[dict[str, Any]]) -> str | None:
    """The label whose settings equal ``settings`` except ``oracle-alpha`` = 0."""
    def rest(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k not in ("oracle-alpha", "seed")}

    for o in others:
        s = o["settings"]
        if s.get("oracle") and s.get("oracle-alpha") == 0 and rest(s) == rest(settings):
            return o["label"]
    return None


def _finalists(cells: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The methods with two or more seeds: label -> seed -> cell."""
    return {k: v for k, v in _by_label(cells).items() if len(v) >= 2}


def _paired_diff(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], metric: str
                 ) -> tuple[float, float, int]:
    """Mean paired test difference ``a - b`` over common seeds, its t-test p and seed count."""
    xa = {s: c["run"]["metrics"][metric] for s, c in a.items()}
    xb = {s: c["run"]["metrics"][metric] for s, c in b.items()}
    common = sorted(set(xa) & set(xb))
    diff = sum(xa[s] - xb[s] for s in common) / len(common) if common else math.nan
    p, n = paired_p(xa, xb)
    return diff, p, n


def pairs_table(cells: list[dict[str, Any]], metric: str = "ndcg@10") -> list[str]:
    """Every pair of finalists: mean paired test difference and its p-value."""
    grouped = _finalists(cells)
    lines = [f"| A | B | mean(A - B) test {metric} | paired p | seeds |", "|---|---|---|---|---|"]
    for a, b in itertools.combinations(grouped, 2):
        diff, p, n = _paired_diff(grouped[a], grouped[b], metric)
        lines.append(f"| {a} | {b} | {diff:+.4f} | {p:.3f} | {n} |")
    return lines


def kl_lines(cells: list[dict[str, Any]]) -> list[str]:
    """One line per Oracle4Rec finalist with alpha > 0 that has an alpha = 0 twin finalist."""
    grouped = _finalists(cells)
    firsts = [next(iter(v.values())) for v in grouped.values()]
    lines = []
    for c in firsts:
        s = c["settings"]
        if not s.get("oracle") or not s.get("oracle-alpha"):
            continue
        twin = _twin_without_kl(s, firsts)
        if twin is None:
            continue
        diff, p, n = _paired_diff(grouped[c["label"]], grouped[twin], "ndcg@10")
        lines.append(f"- the KL term (alpha = {s['oracle-alpha']}) vs none (alpha = 0), same "
                     f"settings otherwise: test ndcg@10 {diff:+.4f} (paired p = {p:.3f}, "
                     f"{n} seeds): `{c['label']}` vs `{twin}`")
    return lines


def summary(out: Path, configs: list[Path] | None = None) -> str:
    """The markdown report of every dataset under ``out``.

    ``configs`` (default :data:`CONFIGS`) name the cells that have no finished run yet.
    """
    cells = load_cells(out)
    missing = not_run(out, CONFIGS if configs is None else configs)
    if not cells:
        raise SystemExit(f"no finished cells under {out}/*/cells; run the bench configs first "
                         "(see this script's docstring)")
    lines = ["# Oracle4Rec vs SASRec, tuned with the same budget (issue 15 §4)", "",
             "Generated by `python bench/oracle4rec_tuning.py --out FOLDER` from the cells of "
             "`bench/oracle4rec_tuning_*.toml` under FOLDER (docs/results/oracle4rec_tuning). "
             f"Selection on seed 0's validation {SELECTION}; test metrics are full-ranking "
             "leave-one-out.",
             ""]
    for dataset in sorted({c["dataset"] for c in cells}):
        ds = [c for c in cells if c["dataset"] == dataset]
        lines += [f"## {dataset}", "", "### Tuning (seed 0)", "", *tuning_table(ds), ""]
        finalists = len(_finalists(ds))
        if finalists:
            lines += ["### Finalists", "", *finalists_table(ds), ""]
        if finalists >= 2:
            lines += [*pairs_table(ds), ""]
            if kl := kl_lines(ds):
                lines += [*kl, ""]
        if missing.get(dataset):
            lines += [f"Not run yet ({len(missing[dataset])} cells of the config): "
                      + "; ".join(missing[dataset]) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    """Command line: ``--out FOLDER`` (the bench outputs' parent folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/oracle4rec_tuning"))
    args = parser.parse_args()
    text = summary(args.out)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
