r"""CoT-Rec benchmark matrix (issue 12): init ablation, ranker (untuned / LoRA) with MAPB, costs.

Cells are dataset x setting x variant (seed ``--seed``):

* ``sasrec-random``: SASRec, random init, no user token (CoT-Rec's reduction to plain SASRec);
* ``title-init``: item rows / user token from MiniLM embeddings of the raw titles (no LLM);
* ``cotrec-init``: item rows / user token from the LLM's perception texts, then the ranker
  (untuned and LoRA-tuned on validation targets) with MAPB;
* ``cotrec-untuned``: the same init and the untuned ranker with MAPB, no LoRA (the full
  LLM init and re-ranking where the LoRA phase does not fit the CPU window);
* ``cotrec-perception``: the same init without the ranker (the init ablation's LLM arm; the
  perception texts are generated once and answered by the call cache in later seeds);
* ``cotrec-items``: item rows from the LLM's item perception only, no user token and no ranker
  (no user perception: compare with ``sasrec-random``, which has no user token either);
* ``title-llm-ranker``: title init + the LLM ranker (untuned and LoRA) with MAPB — the real
  ranker without the perception phases (cheaper than ``cotrec-init`` on 2 CPU cores);
* ``scripted-control``: title init + the ranker driven by ``llm-backend='scripted'`` at
  ``scripted-p=0.5`` (the positive control: its lift is predictable from p and coverage).

Each cell writes ``<out>/<dataset>/<setting>/<variant>/`` (results.json with ``ranker``,
``phases`` and ``llm``; bench.json with the cell's and the process's seconds); seeds other
than 0 go to ``<variant>-seed<s>/``. ``summary.md`` beside
them tabulates every finished cell, then the mean and standard deviation over seeds.

Run (one thread per process, as every number in docs/methods/cotrec.md)::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/cotrec.py \
        --datasets ml-100k --settings central --variants scripted-control,sasrec-random

The stage cache (central runs load the retriever and the LoRA adapter trained for equal
inputs): the same cell twice, ``--cell-suffix=-fill`` then ``--cell-suffix=-fullcache``;
``summary.md`` then compares their phases (``stage_cache_table``). The issue's budget: the
``cotrec-init`` cell with a fresh ``FLOREC_CACHE_DIR`` and ``--cell-suffix=-empty``, then again
with ``--cell-suffix=-fullcache`` on the caches it filled (``budget_table``).

The real-LLM init ablation (3 SASRec seeds, SmolLM2 perception batched 32 prompts a pass)::

    nice -n 19 env FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/cotrec.py \
        --datasets ml-100k --settings central --seeds 0,1,2 --epochs 10 \
        --variants cotrec-perception,sasrec-random,title-init --out docs/results/cotrec
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cotrec_report import (  # noqa: E402,F401 (re-exported for the tests)
    EMPTY_CACHE_CELL,
    FULL_CACHE_CELL,
    FULL_CACHE_CELLS,
    PHASE_ORDER,
    _budget_section,
    _f,
    _finished,
    _stage_section,
    _write_timing,
    budget_table,
    stage_cache_table,
)

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
    "cotrec-perception": {"cotrec-init": "cotrec", "cotrec-ranker": "none"},
    "cotrec-untuned": {"cotrec-init": "cotrec", "cotrec-ranker": "untuned"},
    "cotrec-items": {"cotrec-init": "cotrec", "cotrec-user-token": False, "cotrec-ranker": "none"},
    "title-llm-ranker": {"cotrec-init": "title", "cotrec-ranker": "lora"},
    "scripted-control": {"cotrec-init": "title", "cotrec-ranker": "untuned",
                         "llm-backend": "scripted", "scripted-p": 0.5},
}
SETTINGS = {"central": {}, "federated": {"algorithm": "fedavg", "num-nodes": 10}}


def run_cell(config: dict[str, Any], setting: str, epochs: int, out: Path,
             llm_batch_size: int = 16) -> dict[str, Any]:
    """One cell in this process (federated: the in-process grid with the real handlers).

    A central cell with an in-process LLM (``hf``/``tiny``) generates ``llm_batch_size`` prompts
    per pass (the layer's default is 16; batching multiplies generation throughput on CPU).
    """
    from florec.recdata.runconfig import parse_run_config

    out.mkdir(parents=True, exist_ok=True)
    if setting == "central":
        from florec.sim.central_cotrec import run_central_cotrec

        cfg = parse_run_config(config)
        llm = None
        if cfg.llm_backend in ("hf", "tiny") and (cfg.cotrec_init == "cotrec"
                                                  or cfg.cotrec_ranker != "none"):
            from florec.models.llm.config import LLMConfig
            from florec.models.llm.factory import build_llm

            llm = build_llm(LLMConfig.from_run_config(cfg, batch_size=llm_batch_size))
        return run_central_cotrec(cfg, epochs, 256, out, llm=llm)
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config(config | {"num-rounds": epochs, "out-dir": str(out)})
    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg, out)


def cell_dir(out: Path, dataset: str, setting: str, variant: str, seed: int) -> Path:
    """``<out>/<dataset>/<setting>/<variant>`` (seed 0) or ``.../<variant>-seed<s>``."""
    return out / dataset / setting / (variant if seed == 0 else f"{variant}-seed{seed}")


#: The seeds table's columns: header, and where a run entry keeps the value.
SEED_COLUMNS = (("retriever ndcg@10", ("metrics", "ndcg@10")), ("hr@10", ("metrics", "hr@10")),
                ("untuned ndcg@10", ("ranker", "untuned", "ndcg@10")),
                ("untuned MAPB", ("ranker", "untuned", "mapb")),
                ("LoRA ndcg@10", ("ranker", "lora", "ndcg@10")),
                ("LoRA MAPB", ("ranker", "lora", "mapb")))


def _lookup(run: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        run = run.get(key) if isinstance(run, dict) else None
    return None if run is None else float(run)


def seed_table(out: Path) -> str:
    """Mean ± sample sd over seeds of each (dataset, setting, variant) with >= 2 seeds.

    Seed 0 is the bare ``<variant>`` cell or ``<variant>-empty`` (the same run from empty
    caches), seed s > 0 ``<variant>-seed<s>``. Columns (``SEED_COLUMNS``): the retriever's test
    ndcg@10 and hr@10, and where the cells have a ranker, its ndcg@10 and MAPB untuned and after
    LoRA ("–" where no seed has one; the seed count in brackets where only some have).
    """
    import re

    import numpy as np

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/*/*/results.json")):
        if (run := _finished(path.parent)) is None:
            continue
        ds, setting, cell = path.parts[-4:-1]
        variant = re.sub(r"-(seed\d+|empty)$", "", cell)
        groups.setdefault((ds, setting, variant), []).append(run)
    rows = ["| dataset | setting | variant | seeds | "
            + " | ".join(name for name, _ in SEED_COLUMNS) + " |",
            "|" + "---|" * (4 + len(SEED_COLUMNS))]
    for (ds, setting, variant), runs in groups.items():
        if len(runs) < 2:
            continue
        cells = []
        for name, keys in SEED_COLUMNS:
            v = np.array([x for r in runs if (x := _lookup(r, keys)) is not None])
            digits = 2 if "MAPB" in name else 4
            cells.append("–" if len(v) == 0 else f"{v[0]:.{digits}f} (1)" if len(v) == 1 else
                         f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"
                         + ("" if len(v) == len(runs) else f" ({len(v)})"))
        rows.append(f"| {ds} | {setting} | {variant} | {len(runs)} | {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


def summary(out: Path) -> str:
    """A markdown table of every finished cell under ``out``."""
    head = ("| dataset | setting | variant | retriever ndcg@10 | hr@10 | coverage@10 | "
            "untuned ndcg@10 (MAPB) | LoRA ndcg@10 (MAPB) | LLM calls | cache hits | "
            "tokens in/out | minutes per phase |")
    rows = [head, "|" + "---|" * 12]
    for path in sorted(out.glob("*/*/*/results.json")):
        data = json.loads(path.read_text())
        if data.get("status") != "finished":  # a cell still running (or killed)
            continue
        run = data["runs"][0]
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
    return ("\n".join(rows) + "\n\nMean ± sd over seeds (cells named ``<variant>-seed<s>``; "
            "the bare name or ``<variant>-empty`` is seed 0):\n\n" + seed_table(out)
            + _budget_section(out) + _stage_section(out))


def _value(text: str) -> Any:
    """A ``--set`` value: JSON where it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # e.g. tiny, /work/shared/data


def main() -> None:
    """Parse the arguments and run the selected cells (finished cells are skipped)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ml-100k,amazon-scientific")
    ap.add_argument("--settings", default="central,federated")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30, help="central epochs / federated rounds")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds (SASRec's)")
    ap.add_argument("--llm-batch-size", type=int, default=32,
                    help="prompts per generation pass of an in-process LLM (central cells)")
    ap.add_argument("--set", nargs="*", default=[], help="extra run-config key=value (JSON)")
    ap.add_argument("--out", type=Path, default=Path("results/cotrec"))
    ap.add_argument("--cell-suffix", default="",
                    help="appended to each cell folder, e.g. -fill then -fullcache: the same "
                         "cell with an empty and a full stage cache (stage_cache_table)")
    args = ap.parse_args()
    extra = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    for ds in args.datasets.split(","):
        for setting in args.settings.split(","):
            for variant, seed in ((v, int(s)) for v in args.variants.split(",")
                                  for s in args.seeds.split(",")):
                out = cell_dir(args.out, ds, setting, variant + args.cell_suffix, seed)
                if (out / "results.json").is_file() and \
                        json.loads((out / "results.json").read_text()).get("status") == "finished":
                    continue
                config = (DEFAULTS | SETTINGS[setting] | VARIANTS[variant] | extra
                          | {"dataset": ds, "seed": seed})
                t0 = time.perf_counter()
                try:
                    run_cell(config, setting, args.epochs, out, args.llm_batch_size)
                    _write_timing(out, time.perf_counter() - t0)
                    print(f"{out}: {time.perf_counter() - t0:.0f} s", flush=True)
                except Exception:  # one failed cell must not stop the matrix
                    (out / "error.txt").write_text(traceback.format_exc())
                    print(f"{out}: FAILED (see {out / 'error.txt'})", flush=True)
                (args.out / "summary.md").write_text(summary(args.out))


if __name__ == "__main__":
    main()
