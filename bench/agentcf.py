r"""AgentCF / AgentCF++ benchmark (issue 14): the scripted control and real-data cells.

Suites (``--suite``), each over ``--seeds`` (user-sampling seeds = ``split-seed``):

* ``control``: ``llm-backend='scripted'`` (rules of :mod:`florec.models.agentcf.scripted`) on
  the synthetic multi-domain data, without (``trend=0``) and with (``trend=0.6``) users that
  follow their group's recent items: AgentCF (one shared memory), AgentCF++ without groups
  (dual memory) and AgentCF++ (dual + groups), plus the baselines on the same candidates.
* ``real``: the same methods with ``llm-backend`` (SmolLM2-135M by default) on ``--datasets``
  at the scale given by ``--set`` (e.g. ``agentcf-users=20 agentcf-train-max=4``).

``--nodes N`` runs the cells federated (user memories on N in-process nodes; suite folder
``<suite>-fed``), with bytes up (of which item-reflection text) and down; with ``--flower``
through the Flower ServerApp and ClientApp (:class:`florec.sim.local_grid.LocalGrid`, node
stores in Flower Contexts; suite folder ``<suite>-flower``).

Each cell writes ``<out>/<suite>/<dataset>/<method>/seed<k>/`` (results.json with ``metrics``,
``baselines``, ``phases``, ``llm``; ranks.json); ``summary.md`` tabulates mean and sd over seeds
with the random-guess MRR line. Run (one thread, as every number in docs/methods/agentcf.md)::

    OMP_NUM_THREADS=1 python bench/agentcf.py --suite control --seeds 0,1,2 \
        --out docs/results/agentcf
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

METHODS: dict[str, dict[str, Any]] = {
    "agentcf": {"model": "agentcf"},
    "agentcf++-nogroups": {"model": "agentcf++", "agentcf-groups": 0},
    "agentcf++": {"model": "agentcf++"},
}
SUITES: dict[str, dict[str, dict[str, Any]]] = {
    "control": {"synthetic-trend0": {"dataset": "synthetic", "agentcf-synthetic-trend": 0.0},
                "synthetic-trend0.6": {"dataset": "synthetic",
                                       "agentcf-synthetic-trend": 0.6}},
    "real": {},
}
BASE: dict[str, Any] = {"agentcf-baselines": True, "encoder": "minilm"}
BASELINES = ("random", "pop", "bpr-mf", "sasrec", "llmrank")


def run_cell(config: dict[str, Any], out: Path, nodes: int = 0,
             flower: bool = False) -> dict[str, Any]:
    """One run in this process: central, or federated on ``nodes`` nodes.

    Federated runs use in-process node objects, or with ``flower`` the Flower ServerApp and
    ClientApp on an in-process grid.
    """
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central_agentcf import run_central_agentcf, run_federated_agentcf

    out.mkdir(parents=True, exist_ok=True)
    if flower:
        from florec.server.app import run_federated
        from florec.sim.local_grid import LocalGrid

        cfg = parse_run_config(config | {"num-nodes": nodes, "out-dir": str(out)})
        return run_federated(LocalGrid(cfg.to_flower(), nodes, keep_replies=False), cfg, out)
    cfg = parse_run_config(config)
    run = run_federated_agentcf(cfg, nodes, out) if nodes else run_central_agentcf(cfg, out)
    memories = out / "memories.jsonl"
    if memories.is_file() and memories.stat().st_size > 200_000:
        memories.unlink()  # keep committed raw files small
    return run


def _stat(values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], float)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.4f}" + (f" ± {v.std(ddof=1):.4f}" if v.size > 1 else "")


def _bytes(runs: list[dict]) -> str:
    """Mean KB up (of which item text) and down of federated runs; '–' for central ones."""
    if not runs or not runs[0].get("bytes_up"):
        return "–"
    up = np.mean([r["bytes_up"] for r in runs]) / 1e3
    text = np.mean([r["train"]["item_update_bytes"] for r in runs]) / 1e3
    down = np.mean([r["bytes_down"] for r in runs]) / 1e3
    return f"{up:.0f} ({text:.0f}) / {down:.0f}"


def summary(out: Path) -> str:
    """Markdown tables (one per suite and dataset) of every finished cell under ``out``."""
    cells: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for path in sorted(out.glob("*/*/*/seed*/results.json")):
        suite, ds, method = path.parts[-5:-2]
        data = json.loads(path.read_text())
        if data.get("status") != "finished":
            continue
        cells.setdefault((suite, ds), {}).setdefault(method, []).append(data["runs"][0])
    parts = []
    for (suite, ds), methods in sorted(cells.items()):
        first = next(iter(methods.values()))[0]
        seeds = sorted({r["split_seed"] for runs in methods.values() for r in runs})
        parts.append(f"### {suite} / {ds}\n\nseeds {seeds}; {first['data']['users']} users, "
                     f"{first['data']['test_interactions']} test rows (seed "
                     f"{first['split_seed']}); domains {', '.join(first['data']['domains'])}\n")
        parts.append("| method | MRR | NDCG@1 | NDCG@5 | NDCG@10 | LLM calls per run | "
                     "cache hits | minutes per phase (train / groups / rank) | "
                     "KB up (item text) / down |\n" + "|---" * 9 + "|")
        rows: dict[str, list[dict]] = {}
        for method, runs in methods.items():
            rows[method] = [r["metrics"] for r in runs]
            for name in BASELINES:
                for r in runs:
                    if name in r.get("baselines", {}):
                        rows.setdefault(name, [])
                        if len(rows[name]) < len(runs):
                            rows[name].append(r["baselines"][name])
        for method in [*METHODS, *BASELINES]:
            if method not in rows:
                continue
            ms = rows[method]
            runs = methods.get(method, [])
            calls = np.mean([sum(p.get("llm_calls", 0) for k, p in r["phases"].items()
                                 if k != "baselines") for r in runs]) if runs else 0
            hits = np.mean([sum(p.get("llm_cache_hits", 0) for k, p in r["phases"].items()
                                if k != "baselines") for r in runs]) if runs else 0
            minutes = " / ".join(
                _stat([r["phases"].get(ph, {}).get("seconds", float("nan")) / 60 for r in runs])
                for ph in ("train", "groups", "rank")) if runs else "–"
            parts.append(f"| {method} | {_stat([m['mrr'] for m in ms])} | "
                         f"{_stat([m['ndcg@1'] for m in ms])} | {_stat([m['ndcg@5'] for m in ms])}"
                         f" | {_stat([m['ndcg@10'] for m in ms])} | "
                         f"{int(calls) if runs else '–'} | {int(hits) if runs else '–'} | "
                         f"{minutes} | {_bytes(runs)} |")
        parts.append(f"| random guess (expected, 1 of {1 + 9} candidates) | "
                     f"{first['random_mrr']:.4f} | | | | | | | |\n")
    return "\n".join(parts)


def main() -> None:
    """Parse the arguments and run the selected cells (finished cells are skipped)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=list(SUITES), default="control")
    ap.add_argument("--datasets", default="ml-100k,amazon-scientific",
                    help="suite 'real' only")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", nargs="*", default=[], help="extra run-config key=value (JSON)")
    ap.add_argument("--out", type=Path, default=Path("results/agentcf"))
    ap.add_argument("--nodes", type=int, default=0,
                    help="> 0: federated in process on this many nodes (suite name + '-fed')")
    ap.add_argument("--flower", action="store_true",
                    help="with --nodes: through the Flower apps (suite name + '-flower')")
    ap.add_argument("--summary-only", action="store_true", help="rewrite summary.md only")
    args = ap.parse_args()
    if args.summary_only:
        (args.out / "summary.md").write_text(summary(args.out))
        return
    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
             for k, v in (s.split("=", 1) for s in args.set)}
    datasets = SUITES[args.suite] or {ds: {"dataset": ds} for ds in args.datasets.split(",")}
    if args.suite == "control":
        extra = {"llm-backend": "scripted", "llm-cache": False} | extra
    for name, ds_cfg in datasets.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.methods.split(","):
                suite = args.suite + ("-flower" if args.flower else "-fed" if args.nodes else "")
                out = args.out / suite / name / method / f"seed{seed}"
                done = out / "results.json"
                if done.is_file() and json.loads(done.read_text()).get("status") == "finished":
                    continue
                config = BASE | METHODS[method] | ds_cfg | extra | {"split-seed": seed}
                t0 = time.perf_counter()
                try:
                    run_cell(config, out, args.nodes, args.flower)
                    print(f"{suite}/{name}/{method}/seed{seed}: "
                          f"{time.perf_counter() - t0:.0f} s", flush=True)
                except Exception:  # one failed cell must not stop the matrix
                    (out / "error.txt").write_text(traceback.format_exc())
                    print(f"{suite}/{name}/{method}/seed{seed}: FAILED "
                          f"(see {out / 'error.txt'})", flush=True)
                (args.out / "summary.md").write_text(summary(args.out))


if __name__ == "__main__":
    main()
