r"""LLMD4Rec's positive controls under federation (issue 13), paired with federated SASRec.

Reads ``bench/llmd4rec_federated.toml``. Every run is a whole federation on the in-process
grid with the real node and server handlers (:func:`florec.server.app.run_federated`):

1. ``baseline``: per seed, SASRec under FedAvg for ``pretrain-rounds`` rounds (the LLMD4Rec
   strategy with ``llmd4rec-iterations = 0``) -> ``<out>/baseline-seed<s>.json``;
2. ``arms``: per seed and arm, the same pretraining rounds, then R x E distillation rounds
   (teacher phases on the nodes) -> ``<out>/<arm>/seed<s>.json``, with the baseline's test
   metrics of the same seed under ``baseline``, so ``bench/llmd4rec.py``'s summary pairs them;
3. ``summary``: ``<out>/summary.json`` and ``summary.md`` (:func:`llmd4rec.summarize`), then
   per seed every run's test ndcg@10, best round, bytes and minutes (:func:`seed_table`).

The server selects the best validation round over all rounds, pretraining included, so an
arm whose distillation never beats its pretraining on validation reports the pretraining's
round. ``continued`` runs the same rounds with lambda-crm = 0 and tells extra rounds apart
from distillation. Run (one thread; the numbers in docs/methods/llmd4rec.md came from this)::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llmd4rec_federated.py all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import llmd4rec  # noqa: E402
from llmd4rec import load, summarize, table  # noqa: E402


def _cfg(conf: dict[str, Any], seed: int, out: Path, **overrides: Any):
    """The central bench's run config plus the results folder and the pretraining rounds."""
    return llmd4rec._cfg(conf, seed, {
        "out-dir": str(out), "llmd4rec-pretrain-rounds": conf["bench"]["pretrain-rounds"]}
        | overrides)


def _federate(cfg, work: Path) -> dict[str, Any]:
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                         work)


def valid_curve(cell: Path) -> list[float]:
    """Validation ndcg@10 of every round of the run in ``cell`` (its ``rounds.jsonl``)."""
    from florec.sim.plots import read_rounds

    return [r["valid"]["ndcg@10"] for r in read_rounds(cell) if "ndcg@10" in r.get("valid", {})]


def _write(path: Path, run: dict[str, Any], cfg, seconds: float, cell: Path) -> None:
    run |= {"config": cfg.to_flower(), "bench_seconds": seconds,
            "valid_ndcg10_by_round": valid_curve(cell)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1, default=float))


def run_baselines(conf: dict[str, Any], work: Path, out: Path) -> None:
    """Step 1: federated SASRec for the pretraining rounds, per seed (skips finished files)."""
    for seed in conf["bench"]["seeds"]:
        path = out / f"baseline-seed{seed}.json"
        if path.exists():
            continue
        rounds, cell = conf["bench"]["pretrain-rounds"], work / f"baseline-seed{seed}"
        cfg = _cfg(conf, seed, cell, **{"num-rounds": rounds, "llmd4rec-iterations": 0})
        t0 = time.perf_counter()
        run = _federate(cfg, cell)
        _write(path, run, cfg, time.perf_counter() - t0, cell)
        print(f"baseline seed {seed}: ndcg@10 {run['metrics']['ndcg@10']:.4f} at round "
              f"{run['best_round']} of {rounds}, {time.perf_counter() - t0:.0f} s", flush=True)


def run_arms(conf: dict[str, Any], work: Path, out: Path, arms: list[str]) -> None:
    """Step 2: every arm of every seed after its baseline (skips finished cells)."""
    for seed in conf["bench"]["seeds"]:
        base = json.loads((out / f"baseline-seed{seed}.json").read_text())
        for arm in arms:
            path = out / arm / f"seed{seed}.json"
            if path.exists():
                continue
            cell, knobs = work / arm / f"seed{seed}", conf["defaults"] | conf["arms"][arm]
            rounds = conf["bench"]["pretrain-rounds"] + \
                knobs["llmd4rec-iterations"] * knobs["llmd4rec-crm-epochs"]
            cfg = _cfg(conf, seed, cell, **conf["arms"][arm], **{"num-rounds": rounds})
            t0 = time.perf_counter()
            run = _federate(cfg, cell)
            run["baseline"] = {k: base[k] for k in ("metrics", "valid_metrics", "best_round")}
            run["arm"] = arm
            _write(path, run, cfg, time.perf_counter() - t0, cell)
            print(f"{arm} seed {seed}: ndcg@10 {run['metrics']['ndcg@10']:.4f} at round "
                  f"{run['best_round']} (SASRec {base['metrics']['ndcg@10']:.4f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def seed_table(out: Path) -> str:
    """Per seed and run: test ndcg@10, its gain over ``continued``, best round, MB, minutes."""
    lines = ["| seed | run | ndcg@10 | vs continued | best round / rounds | MB up | MB down "
             "| minutes |", "|" + "---|" * 8]
    for base_path in sorted(out.glob("baseline-seed*.json")):
        seed = base_path.stem.removeprefix("baseline-seed")
        runs = {"sasrec": json.loads(base_path.read_text())}
        runs |= {p.parent.name: json.loads(p.read_text())
                 for p in sorted(out.glob(f"*/seed{seed}.json"))}
        cont = runs.get("continued", {}).get("metrics", {}).get("ndcg@10")
        for name, run in runs.items():
            ndcg = run["metrics"]["ndcg@10"]
            vs = f"{ndcg - cont:+.4f}" if cont is not None and name not in (
                "sasrec", "continued") else "-"
            lines.append(f"| {seed} | {name} | {ndcg:.4f} | {vs} | {run['best_round']} / "
                         f"{run['rounds']} | {run['bytes_up'] / 1e6:.1f} | "
                         f"{run['bytes_down'] / 1e6:.1f} | {run['bench_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def tail_table(out: Path, pretrain: int) -> str:
    """Validation ndcg@10 (mean over seeds) at the last pretraining round and every round after.

    Shows whether the distillation rounds move the CRM up or down, which the test metrics at
    the best validation round hide once no later round beats the pretraining's best.
    """
    curves = {"sasrec": [json.loads(p.read_text()).get("valid_ndcg10_by_round", [])
                         for p in sorted(out.glob("baseline-seed*.json"))]}
    for path in sorted(out.glob("*/seed*.json")):
        curves.setdefault(path.parent.name, []).append(
            json.loads(path.read_text()).get("valid_ndcg10_by_round", []))
    longest = max((len(c) for runs in curves.values() for c in runs), default=0)
    rounds = list(range(pretrain, longest + 1))
    if not rounds:
        return ""
    lines = ["| run | n | " + " | ".join(f"valid ndcg@10, round {r}" for r in rounds) + " |",
             "|---|---|" + "---|" * len(rounds)]
    for name, runs in curves.items():
        cells = []
        for r in rounds:
            values = [c[r - 1] for c in runs if len(c) >= r]
            cells.append(f"{sum(values) / len(values):.4f}" if values else "-")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: ``baseline``, ``arms``, ``summary`` or ``all``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("baseline", "arms", "summary", "all"))
    parser.add_argument("--config", type=Path, default=ROOT / "llmd4rec_federated.toml")
    parser.add_argument("--work", type=Path, default=Path("results/llmd4rec-federated-work"))
    parser.add_argument("--out", type=Path,
                        default=ROOT.parent / "docs/results/llmd4rec-federated")
    parser.add_argument("--arms", default="continued,scripted-p0.3,scripted-p0.6")
    parser.add_argument("--seeds", default="", help="comma-separated subset of the seeds")
    args = parser.parse_args()
    conf = load(args.config)
    if args.seeds:
        conf["bench"]["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.step in ("baseline", "all"):
        run_baselines(conf, args.work, args.out)
    if args.step in ("arms", "all"):
        run_arms(conf, args.work, args.out, args.arms.split(","))
    if args.step in ("summary", "all"):
        text = table(summarize(args.out)) + "\n" + seed_table(args.out) + "\n" + \
            tail_table(args.out, conf["bench"]["pretrain-rounds"])
        (args.out / "summary.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
