r"""Federated LLKD vs the same LLKD trained centrally (Amazon-Scientific, scripted or SmolLM2).

Federated: ``num-nodes`` nodes (contiguous user buckets); each node's unlabeled data are the
titles of the pool items in its users' training histories; it runs the teacher and
``local-epochs`` LLKD epochs per round; the server averages head and thresholds weighted by
pool size (:mod:`florec.strategies.llkd`). The round is selected on the dev half of the
held-out items (``hr@1`` = accuracy), test metrics are the other half's. Central: the same
student, ``rounds x local-epochs`` epochs over the pooled pool, evaluated on the same test half.
The run goes through the normal federated path (ServerApp logic, ClientApp handlers, messages)
on the in-process grid.

``--teacher smollm2`` uses SmolLM2-135M-Instruct (``llm-backend='hf'``) instead of the scripted
teacher and writes ``federated_smollm2.{json,md}``; the federated run goes first, so its
nodes' teacher calls are not answered by a cache the central run filled (the central run then
finds the same prompts in the call cache: same answers, fewer minutes).

Run::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llkd_fed.py \
        --out docs/results/llkd --seeds 0,1,2
    FLOREC_CACHE_DIR=EMPTY FLOREC_DATA_DIR=DATA OMP_NUM_THREADS=1 python bench/llkd_fed.py \
        --out docs/results/llkd --seeds 0 --teacher smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COMMON = {"model": "llkd", "algorithm": "fedavg", "dataset": "amazon-scientific",
          "llkd-classes": 8, "llkd-ema": 0.9, "encoder": "minilm", "device": "cpu",
          "num-nodes": 10, "num-rounds": 10, "local-epochs": 1, "selection-metric": "hr@1",
          "ks": "1,3", "eval-every": 1}
#: each ``--teacher``: its run-config keys and the results' file stem
TEACHERS = {"scripted": ({"llm-backend": "scripted", "scripted-p": 0.6}, "federated"),
            "smollm2": ({"llm-backend": "hf", "llm-model": "smollm2"}, "federated_smollm2")}
BASE = COMMON | TEACHERS["scripted"][0]


def federated(seed: int, data_dir: str, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """One federated run on the in-process grid; its test accuracy / macro-F1 at the best round."""
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_run_config(base | {"seed": seed, "data-dir": data_dir, "out-dir": tmp})
        t0 = time.perf_counter()
        run = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                            Path(tmp))
    return {"setting": "federated", "seed": seed, "accuracy": run["metrics"]["hr@1"],
            "macro-f1": run["llkd"]["macro-f1"].get("test"), "best_round": run["best_round"],
            "minutes": (time.perf_counter() - t0) / 60}


def central(seed: int, data_dir: str, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """The same LLKD on the pooled pool, scored on the federated run's test half."""
    from florec.client.llkd_node import held_out_share
    from florec.models.llkd.student import accuracy_macro_f1
    from florec.models.llkd.task import split_task
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central_llkd import prepare, train_rule

    cfg = parse_run_config(base | {"seed": seed, "data-dir": data_dir})
    t0 = time.perf_counter()
    prep = prepare(cfg)
    result = train_rule(prep, cfg, "llkd", cfg.num_rounds * cfg.local_epochs)
    _, held_out = split_task(prep.task, cfg.llkd_test_fraction, cfg.split_seed)
    test = np.concatenate([held_out_share(held_out, cfg.split_seed, p, cfg.num_nodes)["test"]
                           for p in range(cfg.num_nodes)])
    pred = result["trainer"].student.predict(prep.emb[test])
    out = accuracy_macro_f1(pred, prep.task.gold[test], len(prep.task.classes))
    return {"setting": "central", "seed": seed, **out, "share_ever": result["share_ever"],
            "teacher_gate": prep.gate, "llm_calls": prep.llm_stats,
            "minutes": (time.perf_counter() - t0) / 60}


def table(report: dict[str, Any]) -> str:
    """Markdown: mean +- std over seeds of test accuracy and macro-F1 per setting."""
    rows = report["rows"]
    lines = ["| setting | test accuracy | test macro-F1 | minutes per run |", "|---|---|---|---|"]
    for setting in ("central", "federated"):
        sel = [r for r in rows if r["setting"] == setting]
        acc, f1 = (np.array([r[k] for r in sel], float) for k in ("accuracy", "macro-f1"))
        sd = [a.std(ddof=1) if len(a) > 1 else 0.0 for a in (acc, f1)]
        lines.append(f"| {setting} | {acc.mean():.3f} ± {sd[0]:.3f} | {f1.mean():.3f} ± "
                     f"{sd[1]:.3f} | {np.mean([r['minutes'] for r in sel]):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Central and federated LLKD for each seed; writes ``federated.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/llkd"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default="scripted")
    parser.add_argument("--from-json", action="store_true",
                        help="only rewrite <stem>.md from <out>/<stem>.json")
    args = parser.parse_args()
    teacher, stem = TEACHERS[args.teacher]
    base = COMMON | teacher
    if args.from_json:
        report = json.loads((args.out / f"{stem}.json").read_text())
        (args.out / f"{stem}.md").write_text(table(report))
        return
    data_dir = os.environ.get("FLOREC_DATA_DIR", "")
    rows = []
    order = (central, federated) if args.teacher == "scripted" else (federated, central)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for fn in order:
            rows.append(fn(seed, data_dir, base))
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"config": base, "rows": rows, "load_average": os.getloadavg()}
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(table(report))
    print(table(report))


if __name__ == "__main__":
    main()
