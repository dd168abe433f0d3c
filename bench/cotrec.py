r"""CoT-Rec benchmark matrix (issue 12): init ablation, ranker (untuned / LoRA) with MAPB, costs.

Cells are dataset x setting x variant (seed ``--seed``):

* ``sasrec-random``: SASRec, random init, no user token (CoT-Rec's reduction to plain SASRec);
* ``title-init``: item rows / user token from MiniLM embeddings of the raw titles (no LLM);
* ``cotrec-init``: item rows / user token from the LLM's perception texts, then the ranker
  (untuned and LoRA-tuned on validation targets) with MAPB;
* ``title-llm-ranker``: title init + the LLM ranker (untuned and LoRA) with MAPB — the real
  ranker without the perception phases (cheaper than ``cotrec-init`` on 2 CPU cores);
* ``scripted-control``: title init + the ranker driven by ``llm-backend='scripted'`` at
  ``scripted-p=0.5`` (the positive control: its lift is predictable from p and coverage).

Each cell writes ``<out>/<dataset>/<setting>/<variant>/`` (results.json with ``ranker``,
``phases`` and ``llm``); ``summary.md`` beside them tabulates every finished cell.

Run (one thread per process, as every number in docs/methods/cotrec.md)::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/cotrec.py \
        --datasets ml-100k --settings central --variants scripted-control,sasrec-random
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "model": "cotrec", "split": "loo", "dim": 64, "max-seq-len": 32, "heads": 2,
    "seq-layers": 2, "dropout": 0.5, "lr": 0.001, "ks": "10,20", "selection-metric": "ndcg@10",
    "patience": 5, "encoder": "minilm", "llm-backend": "hf", "cotrec-mapb-users": 50,
    "device": "cpu", "local-batch-size": 256,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "sasrec-random": {"cotrec-init": "random", "cotrec-user-token": False,
                      "cotrec-ranker": "none"},
    "title-init": {"cotrec-init": "title", "cotrec-ranker": "none"},
    "cotrec-init": {"cotrec-init": "cotrec", "cotrec-ranker": "lora"},
    "title-llm-ranker": {"cotrec-init": "title", "cotrec-ranker": "lora"},
    "scripted-control": {"cotrec-init": "title", "cotrec-ranker": "untuned",
                         "llm-backend": "scripted", "scripted-p": 0.5},
}
SETTINGS = {"central": {}, "federated": {"algorithm": "fedavg", "num-nodes": 10}}


def run_cell(config: dict[str, Any], setting: str, epochs: int, out: Path) -> dict[str, Any]:
    """One cell in this process (federated: the in-process grid with the real handlers)."""
    from florec.recdata.runconfig import parse_run_config

    out.mkdir(parents=True, exist_ok=True)
    if setting == "central":
        from florec.sim.central_cotrec import run_central_cotrec

        cfg = parse_run_config(config)
        return run_central_cotrec(cfg, epochs, 256, out)
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config(config | {"num-rounds": epochs, "out-dir": str(out)})
    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg, out)


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def summary(out: Path) -> str:
    """A markdown table of every finished cell under ``out``."""
    head = ("| dataset | setting | variant | retriever ndcg@10 | hr@10 | coverage@10 | "
            "untuned ndcg@10 (MAPB) | LoRA ndcg@10 (MAPB) | LLM calls | cache hits | "
            "tokens in/out | minutes per phase |")
    rows = [head, "|" + "---|" * 12]
    for path in sorted(out.glob("*/*/*/results.json")):
        run = json.loads(path.read_text())["runs"][0]
        ds, setting, variant = path.parts[-4:-1]
        ranker = run.get("ranker") or {}
        un, lo = ranker.get("untuned", {}), ranker.get("lora", {})
        phases = run.get("phases", {})
        calls = sum(p.get("llm_calls", 0) for p in phases.values())
        hits = sum(p.get("llm_cache_hits", 0) for p in phases.values())
        tin = sum(p.get("prompt_tokens", 0) for p in phases.values())
        tout = sum(p.get("completion_tokens", 0) for p in phases.values())
        minutes = ", ".join(f"{k} {v['seconds'] / 60:.1f}" for k, v in phases.items())
        m = run.get("metrics", {})
        lora = ("skipped" if "skipped" in lo else
                f"{_f(lo.get('ndcg@10'))} ({_f(lo.get('mapb'), 2)})" if lo else "–")
        rows.append(
            f"| {ds} | {setting} | {variant} | {_f(m.get('ndcg@10'))} | {_f(m.get('hr@10'))} | "
            f"{_f(ranker.get('retriever', {}).get('coverage'))} | "
            f"{_f(un.get('ndcg@10'))} ({_f(un.get('mapb'), 2)}) | {lora} | {int(calls)} | "
            f"{int(hits)} | {int(tin)}/{int(tout)} | {minutes} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    """Parse the arguments and run the selected cells (finished cells are skipped)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ml-100k,amazon-scientific")
    ap.add_argument("--settings", default="central,federated")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30, help="central epochs / federated rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="extra run-config key=value (JSON)")
    ap.add_argument("--out", type=Path, default=Path("results/cotrec"))
    args = ap.parse_args()
    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
             for k, v in (s.split("=", 1) for s in args.set)}
    for ds in args.datasets.split(","):
        for setting in args.settings.split(","):
            for variant in args.variants.split(","):
                out = args.out / ds / setting / variant
                if (out / "results.json").is_file() and \
                        json.loads((out / "results.json").read_text()).get("status") == "finished":
                    continue
                config = (DEFAULTS | SETTINGS[setting] | VARIANTS[variant] | extra
                          | {"dataset": ds, "seed": args.seed})
                t0 = time.perf_counter()
                try:
                    run_cell(config, setting, args.epochs, out)
                    print(f"{ds}/{setting}/{variant}: {time.perf_counter() - t0:.0f} s", flush=True)
                except Exception:  # one failed cell must not stop the matrix
                    (out / "error.txt").write_text(traceback.format_exc())
                    print(f"{ds}/{setting}/{variant}: FAILED (see {out / 'error.txt'})",
                          flush=True)
                (args.out / "summary.md").write_text(summary(args.out))


if __name__ == "__main__":
    main()
