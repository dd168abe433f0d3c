r"""LLKD benchmark (issue 13): SmolLM2 teacher gate, then five selection rules at equal budget.

Per dataset of ``bench/llkd.toml``:

1. **gate**: SmolLM2-135M-Instruct (``llm-backend='hf'``) scores ``gate-items`` pool items;
   it passes if its accuracy beats the majority class and the AUROC of its confidence for
   right vs wrong pseudo-labels exceeds 0.6;
2. **comparison**: for each seed, ``llkd`` first, then ``random``, ``teacher`` and ``student``
   at LLKD's budget (its count of samples ever selected), and ``all``; the teacher is SmolLM2
   (on the gate subset) if it passed, else the ``scripted`` teacher with confidence-linked
   noise (mean accuracy ``scripted-p``) on the whole pool, which tests the selection rule;
3. LLKD again for each EMA momentum of ``ema_ablation``.

Writes ``<out>/<dataset>.json`` (every run's metrics, selection counts, thresholds, phase
minutes, LLM calls / cache hits) and ``<out>/summary.md`` (mean +- std over seeds).

Run (one thread, as every number in docs/methods/llkd.md)::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llkd.py \
        --config bench/llkd.toml --out docs/results/llkd
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np


def _cfg(base: dict, dataset: dict, **extra: Any):
    from florec.recdata.runconfig import parse_run_config

    keys = {k: v for k, v in dataset.items() if k.startswith("llkd-") or k == "scripted-p"}
    return parse_run_config(base | keys | {"dataset": dataset["name"]} | extra)


def _clean(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "trainer"}


def gate(base: dict, dataset: dict) -> dict[str, Any]:
    """SmolLM2 on ``gate-items`` pool items: the gate's numbers and the teacher's cost."""
    from florec.sim.central_llkd import prepare

    t0 = time.perf_counter()
    cfg = _cfg(base, dataset, **{"llm-backend": "hf", "llkd-teacher-items":
                                 dataset["gate-items"]})
    prep = prepare(cfg)
    return {"teacher": "smollm2", "gate": prep.gate, "phases": prep.log.phases,
            "llm": prep.llm_stats, "minutes": (time.perf_counter() - t0) / 60,
            "prep": prep, "cfg": cfg}


def comparison(base: dict, dataset: dict, spec: dict, smollm2: dict) -> list[dict[str, Any]]:
    """Every selection rule for every seed (LLKD first: it sets the budget)."""
    from florec.sim.central_llkd import prepare, train_rule

    runs = []
    for seed in spec["seeds"]:
        t0 = time.perf_counter()
        if smollm2["gate"]["passed"]:
            cfg, prep = smollm2["cfg"].model_copy(update={"seed": seed}), smollm2["prep"]
            teacher = "smollm2"
        else:
            cfg = _cfg(base, dataset, **{"llm-backend": "scripted", "seed": seed})
            prep, teacher = prepare(cfg), f"scripted-p{cfg.scripted_p:g}"
        prep_minutes = (time.perf_counter() - t0) / 60
        llkd = train_rule(prep, cfg, "llkd", spec["epochs"])
        budget = llkd["selected_ever"]
        for selection in spec["selections"]:
            if selection == "llkd":
                result = llkd
            else:
                result = train_rule(prep, cfg, selection, spec["epochs"],
                                    budget if selection != "all" else 0)
            runs.append(_clean(result) | {"seed": seed, "teacher": teacher,
                                          "ema": cfg.llkd_ema, "gate": prep.gate,
                                          "prep_minutes": prep_minutes,
                                          "phases": prep.log.phases, "llm": prep.llm_stats})
        for ema in spec.get("ema_ablation", []):
            result = train_rule(prep, cfg.model_copy(update={"llkd_ema": ema}), "llkd",
                                spec["epochs"])
            runs.append(_clean(result) | {"seed": seed, "teacher": teacher, "ema": ema,
                                          "selection": f"llkd-ema{ema:g}"})
    return runs


def summarise(name: str, report: dict[str, Any]) -> str:
    """Markdown: the gate line and mean +- std over seeds of every rule."""
    g = report["smollm2"]
    lines = [f"### {name}", "",
             f"SmolLM2 gate on {g['gate']['n']} pool items: accuracy {g['gate']['accuracy']:.3f} "
             f"vs majority class {g['gate']['majority']:.3f}, confidence AUROC "
             f"{g['gate']['auroc']:.3f} -> **{'passed' if g['gate']['passed'] else 'failed'}** "
             f"({g['minutes']:.1f} min, {g['llm']['llm_calls']} LLM calls, "
             f"{g['llm']['llm_cache_hits']} cache hits).", ""]
    runs = report["runs"]
    teacher = runs[0]["teacher"]
    gates = [r["gate"] for r in runs if "gate" in r]
    lines += [f"Teacher of the comparison: `{teacher}`, pool accuracy "
              f"{np.mean([x['accuracy'] for x in gates]):.3f}, confidence AUROC "
              f"{np.mean([x['auroc'] for x in gates]):.3f}; pool {report['pool']} items, "
              f"test {report['test']} items, {len(report['seeds'])} seeds.", "",
              "| rule | budget (distinct samples) | share ever selected | pseudo-label accuracy "
              "of selected | test accuracy | test macro-F1 | student s |",
              "|---|---|---|---|---|---|---|"]
    for rule in dict.fromkeys(r["selection"] for r in runs):
        rows = [r for r in runs if r["selection"] == rule]

        def ms(key: str, rows: list = rows) -> str:
            vals = np.array([r[key] for r in rows], float)
            return f"{vals.mean():.3f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.3f}"
        budget = np.mean([r["budget"] or r["selected_ever"] for r in rows])
        lines.append(f"| {rule} | {budget:.0f} | {ms('share_ever')} | "
                     f"{ms('pseudo_accuracy_selected')} | {ms('accuracy')} | {ms('macro-f1')} | "
                     f"{np.mean([r['seconds'] for r in rows]):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the bench of ``--config`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("bench/llkd.toml"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/llkd"))
    parser.add_argument("--datasets", default="", help="comma-separated subset of the config's")
    args = parser.parse_args()
    spec = tomllib.loads(args.config.read_text())
    base = spec["base"] | ({"data-dir": os.environ["FLOREC_DATA_DIR"]}
                           if os.environ.get("FLOREC_DATA_DIR") else {})
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.datasets.split(",")))
    parts = []
    load = os.getloadavg()
    for dataset in spec["dataset"]:
        if wanted and dataset["name"] not in wanted:
            continue
        t0 = time.perf_counter()
        smollm2 = gate(base, dataset)
        runs = comparison(base, dataset, spec, smollm2)
        prep = smollm2.pop("prep")
        smollm2.pop("cfg")
        report = {"dataset": dataset, "smollm2": smollm2, "runs": runs, "seeds": spec["seeds"],
                  "epochs": spec["epochs"], "pool": int(sum(prep.task.gold[prep.pool] >= 0))
                  if smollm2["gate"]["passed"] else runs[0]["gate"]["n"],
                  "test": len(prep.test), "classes": list(prep.task.classes),
                  "minutes": (time.perf_counter() - t0) / 60,
                  "load_average_start": load, "load_average_end": os.getloadavg()}
        (args.out / f"{dataset['name']}.json").write_text(json.dumps(report, indent=1))
        parts.append(summarise(dataset["name"], report))
        print(parts[-1], flush=True)
    header = ("# LLKD bench summary\n\nGenerated by `bench/llkd.py --config bench/llkd.toml` "
              "from the JSON files beside it.\n\n")
    (args.out / "summary.md").write_text(header + "\n".join(parts))


if __name__ == "__main__":
    main()
