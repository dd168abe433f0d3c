"""Federated MF vs central MF-BPR: test ndcg@10, share of central, rounds and bytes, per method.

Reads a bench ``results.json`` (e.g. ``docs/results/fedmf_converge/results.json`` written by
``florec bench --config bench/fedmf_converge.toml``) and writes one markdown row per method:
n seeds, test ndcg@10 and recall@20 (mean ± sample sd), the mean ndcg@10 as a share of the
reference method's mean (``share = mean_method / mean_reference``; the goal of issue 15 is
>= 95%), the paired share (below), the best round/epoch, the rounds/epochs run, the cap
(max rounds/epochs) and what ended the run (``cap`` when it ran all of them, else ``patience``)
per seed, and the bytes a run moved (down and up, MB = 1e6 bytes, mean over
seeds, whole run including the patience rounds).

Paired share: per seed s, ``r_s = m_s / ref_s`` (the reference run of the same dataset and
seed); the cell shows ``mean(r) ± sd(r)`` and the two-sided 95% Student-t interval
``mean(r) ± t_{0.975, n-1} sd(r) / sqrt(n)`` (``—`` when a seed has no reference run, or for
the reference itself). A goal of ">= 95% of central" is met when the interval's lower end is
at least 95%.

``--curves FOLDER`` instead lists each cell's validation ndcg@10 per round from the cells'
``rounds.jsonl`` (the short tuning runs in ``docs/results/fedmf_converge/tuning/``).

``--valid`` adds the best validation value of the metric (mean ± sd over seeds, from each
run's ``valid_metrics``): what a bench's "best mean validation" rule between rows reads.

``--reference LABEL`` compares against another method of the bench than its ``[bench]
reference`` and ``--method A --method B`` keeps only those labels (e.g. federated GRU4Rec
against central GRU4Rec in a bench whose reference is SASRec).

``--config BENCH.toml`` reads the finished cells of a bench folder instead of its
``results.json`` (the same collection ``florec bench`` writes at its end), so a bench stopped
before its last cell still gets its table; unfinished cells are left out. Several
``FOLDER --config BENCH.toml`` pairs (folders in order, one ``--config`` each) pool their
finished cells into one table; a later pair's cell replaces an earlier one of the same
dataset, label and seed (e.g. a rerun with a larger round cap).

Usage::

    python bench/fedmf_report.py docs/results/fedmf_converge/results.json
        --out docs/results/fedmf_converge/summary.md
    python bench/fedmf_report.py --curves docs/results/fedmf_converge/tuning
    python bench/fedmf_report.py docs/results/fedmf_converge_ml1m
        --config bench/fedmf_converge_ml1m.toml
    python bench/fedmf_report.py docs/results/fedmf_converge_ml1m
        docs/results/fedmf_converge_ml1m/cap120 --config bench/fedmf_converge_ml1m.toml
        --config bench/fedmf_converge_ml1m_cap120.toml
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


def paired_share(runs: list[dict[str, Any]], refs: list[dict[str, Any]],
                 metric: str = "ndcg@10") -> str:
    """The per-seed ratio to the reference: ``mean ± sd [95% t-interval]`` in percent.

    ``r_s = runs[s][metric] / refs[s][metric]`` over the seeds of ``runs``; the interval is
    ``mean(r) ± t_{0.975, n-1} sd(r) / sqrt(n)`` (sample sd). One seed gives ``r`` alone; a seed
    without a reference run gives ``—``.
    """
    from scipy import stats

    by_seed = {r["seed"]: r["metrics"][metric] for r in refs}
    if any(r["seed"] not in by_seed for r in runs):
        return "—"
    ratios = [100 * r["metrics"][metric] / by_seed[r["seed"]] for r in runs]
    if len(ratios) == 1:
        return f"{ratios[0]:.1f}%"
    mean, sd = statistics.mean(ratios), statistics.stdev(ratios)
    half = stats.t.ppf(0.975, len(ratios) - 1) * sd / len(ratios) ** 0.5
    return f"{mean:.1f} ± {sd:.1f}% [{mean - half:.1f}, {mean + half:.1f}]"


def cap_of(run: dict[str, Any]) -> str:
    """The run's cap: ``cap`` (set by :func:`from_cells`), else central ``max_epochs``, else ?."""
    cap = run.get("cap", run.get("max_epochs"))
    return "?" if cap is None else str(cap)


def ended_by(run: dict[str, Any]) -> str:
    """What ended the run: ``cap`` when it ran all its cap's rounds/epochs, else ``patience``.

    A run that reached its cap may not have converged (its best round can sit at the cap);
    ``?`` when the cap is unknown.
    """
    cap = run.get("cap", run.get("max_epochs"))
    if cap is None:
        return "?"
    return "cap" if run["rounds"] >= int(cap) else "patience"


def report(results: dict[str, Any], metric: str = "ndcg@10", valid: bool = False) -> str:
    """The markdown table (see the module docstring); ``valid`` adds the best validation column.

    Raises
    ------
    ConfigError
        If the bench has no reference method or a run lacks ``metric``.

    """
    ref_label = results.get("config", {}).get("bench", {}).get("reference")
    grouped = groups(results)
    extra = [] if metric == "recall@20" else ["recall@20"]  # recall@20 beside the metric
    head = ["dataset", "method", "setting", "n", f"test {metric}", *(f"test {m}" for m in extra),
            f"share of {ref_label}", "paired share (95% CI)", "best epoch/round",
            "epochs/rounds run", "cap", "ended by", "MB down per run", "MB up per run"]
    if valid:
        head.insert(5 + len(extra), f"best valid {metric}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ds, lab), runs in grouped.items():
        if (ds, ref_label) not in grouped:
            raise ConfigError(f"bench reference '{ref_label}' has no runs on {ds}; set "
                              "[bench] reference to a method label of the config")
        if any(metric not in r["metrics"] for r in runs):
            raise ConfigError(f"{lab} on {ds} has no {metric}")
        if valid and any(metric not in r.get("valid_metrics", {}) for r in runs):
            raise ConfigError(f"{lab} on {ds} has no validation {metric}; drop --valid")
        ref = statistics.mean(r["metrics"][metric] for r in grouped[(ds, ref_label)])
        share = statistics.mean(r["metrics"][metric] for r in runs) / ref
        mb = [statistics.mean(r.get(k, 0) for r in runs) / 1e6 for k in ("bytes_down", "bytes_up")]
        lines.append("| " + " | ".join([
            ds, lab, runs[0]["setting"], str(len(runs)),
            mean_sd([r["metrics"][metric] for r in runs]),
            *(mean_sd([r["metrics"][m] for r in runs]) for m in extra),
            *([mean_sd([r["valid_metrics"][metric] for r in runs])] if valid else []),
            f"{100 * share:.1f}%",
            "—" if lab == ref_label else paired_share(runs, grouped[(ds, ref_label)], metric),
            ", ".join(str(r["best_round"]) for r in runs),
            ", ".join(str(r["rounds"]) for r in runs), ", ".join(cap_of(r) for r in runs),
            ", ".join(ended_by(r) for r in runs), f"{mb[0]:.0f}", f"{mb[1]:.0f}"]) + " |")
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

    Like ``florec bench``'s own collection (a cell counts when it finished with the settings
    the config gives it now), plus each run's ``cap``: the cell's ``epochs`` (central, default
    20 as ``florec bench``) or its ``num-rounds`` as the run config resolves it (federated).

    Raises
    ------
    ConfigError
        If ``config`` is not a valid bench file or no cell of it has finished in ``folder``.

    """
    from florec.recdata.runconfig import parse_run_config
    from florec.server.results import environment, read_results
    from florec.sim.bench import cell_config, cells_of, load_bench

    conf = load_bench(config)
    runs = []
    for cell in cells_of(conf, folder):
        if not cell.finished(conf):
            continue
        cap = (int(cell.method.get("epochs", 20)) if cell.method["setting"] == "central"
               else parse_run_config(cell_config(conf, cell)).num_rounds)
        setting = {k: v for k, v in cell_config(conf, cell).items() if k not in CAP_KEYS}
        runs += [run | {"label": cell.label, "cap": cap, "cell_settings": setting}
                 for run in read_results(cell.out_dir)["runs"]]
    if not runs:
        raise ConfigError(f"no cell of {config} has finished in {folder}; run florec bench "
                          f"--config {config} --out {folder} first")
    return {"config": conf, "env": environment(), "runs": runs}


CAP_KEYS = ("num-rounds", "epochs", "out-dir")


def _without_seed(setting: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in setting.items() if k != "seed"}


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Bench results dicts pooled into one: the first one's config, every run, later ones win.

    A run of a later part replaces an earlier run of the same dataset, label and seed; method
    labels only in later parts are appended to the config's method list (in their order). The
    reference is the first part's.

    Raises
    ------
    ConfigError
        If the same (dataset, label) has different run settings in two parts, apart from its
        cap (``num-rounds`` / ``epochs``): pooling them would mix two configs in one row.

    """
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    settings: dict[tuple[str, str], dict[str, Any]] = {}
    for part in parts:
        for run in part["runs"]:
            row = (run["dataset"], run["label"])
            first = settings.setdefault(row, _without_seed(run.get("cell_settings", {})))
            if _without_seed(run.get("cell_settings", {})) != first:
                raise ConfigError(f"'{run['label']}' on {run['dataset']} has different settings "
                                  "in the pooled folders (beyond num-rounds/epochs): give the "
                                  "rows different labels or pool only equal settings")
            runs[(run["dataset"], run["label"], run["seed"])] = run
    conf = dict(parts[0]["config"])
    labels = [m["label"] for m in conf.get("method", [])]
    for part in parts[1:]:
        labels += [m["label"] for m in part["config"].get("method", [])
                   if m["label"] not in labels]
    conf["method"] = [{"label": lab} for lab in labels]
    return {"config": conf, "env": parts[0].get("env", {}), "runs": list(runs.values())}


def selected(results: dict[str, Any], reference: str | None, methods: list[str] | None
             ) -> dict[str, Any]:
    """``results`` with another reference label and only the runs of the labels ``methods``."""
    out = dict(results)
    if reference is not None:
        conf = dict(out.get("config", {}))
        conf["bench"] = dict(conf.get("bench", {})) | {"reference": reference}
        out["config"] = conf
    if methods is not None:
        out["runs"] = [r for r in out["runs"] if r["label"] in methods]
    return out


def loaded(results: list[Path], configs: list[Path]) -> dict[str, Any]:
    """One bench ``results.json``, or the pooled finished cells of folders (one config each)."""
    if configs:
        if len(configs) != len(results):
            raise ConfigError(f"{len(results)} folder(s) but {len(configs)} --config; "
                              "give one --config per bench folder, in the same order")
        return pooled([from_cells(c, f) for f, c in zip(results, configs, strict=True)])
    if len(results) == 1:
        return json.loads(results[0].read_text())
    raise ConfigError("give one bench results.json, FOLDER(s) with --config, or "
                      "--curves FOLDER")


def main() -> None:
    """Command line: print the table or write it to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="*",
                    help="a bench results.json (with --config: bench folders, one per --config)")
    ap.add_argument("--config", type=Path, action="append", default=[],
                    help="a bench TOML: read the folder's finished cells, not results.json "
                         "(repeat it, one per folder, to pool several benches)")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--curves", type=Path, default=None, help="a folder of bench cells")
    ap.add_argument("--reference", default=None, help="a method label: the 100%% row")
    ap.add_argument("--method", action="append", default=None,
                    help="a method label to keep (repeat it; default: all)")
    ap.add_argument("--valid", action="store_true",
                    help="add the best validation value of --metric (mean ± sd over seeds)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.curves is not None:
        text = curves(args.curves, args.metric)
    else:
        text = report(selected(loaded(args.results, args.config), args.reference, args.method),
                      args.metric, args.valid)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
