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
``summary.md`` then compares their phases (``stage_cache_table``), and a finished
``cotrec-init-fullcache`` cell adds its measured wall time to the budget (``budget_table``).

The real-LLM init ablation (3 SASRec seeds, SmolLM2 perception batched 32 prompts a pass)::

    nice -n 19 env FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/cotrec.py \
        --datasets ml-100k --settings central --seeds 0,1,2 --epochs 10 \
        --variants cotrec-perception,sasrec-random,title-init --out docs/results/cotrec
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


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def cell_dir(out: Path, dataset: str, setting: str, variant: str, seed: int) -> Path:
    """``<out>/<dataset>/<setting>/<variant>`` (seed 0) or ``.../<variant>-seed<s>``."""
    return out / dataset / setting / (variant if seed == 0 else f"{variant}-seed{seed}")


def seed_table(out: Path) -> str:
    """Mean ± sample sd over seeds of each (dataset, setting, variant) with >= 2 seeds."""
    import re

    import numpy as np

    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for path in sorted(out.glob("*/*/*/results.json")):
        if json.loads(path.read_text()).get("status") != "finished":
            continue
        ds, setting, cell = path.parts[-4:-1]
        variant = re.sub(r"-seed\d+$", "", cell)
        groups.setdefault((ds, setting, variant), []).append(
            json.loads(path.read_text())["runs"][0].get("metrics", {}))
    rows = ["| dataset | setting | variant | seeds | ndcg@10 | hr@10 |", "|" + "---|" * 6]
    for (ds, setting, variant), runs in groups.items():
        if len(runs) < 2:
            continue
        cells = []
        for key in ("ndcg@10", "hr@10"):
            v = np.array([r[key] for r in runs], dtype=float)
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1):.4f}")
        rows.append(f"| {ds} | {setting} | {variant} | {len(runs)} | {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


#: Sources of the per-stage rates of a full ML-100K ``cotrec`` cell (``budget_table``): phase,
#: results file under ``<out>/<dataset>/central/`` (a cell's results.json or a prefill JSON),
#: the phase inside it (``a|b``: the first cell folder with a finished results.json, and the
#: phase at the same position), and the full cell's count of that phase's LLM calls (None: its
#: seconds as measured, e.g. the retriever's epochs or the LoRA epoch over the validation
#: samples).
BUDGET_SOURCES: list[tuple[str, str, str, str | None]] = [
    ("item-perception", "perception-items.json", "", "items"),
    ("user-perception", "cotrec-untuned", "user-perception", "users"),
    ("retriever", "cotrec-untuned", "retriever", None),
    ("ranker-untuned", "cotrec-untuned", "ranker-untuned", None),
    ("ranker-lora-train", "cotrec-init|title-llm-ranker", "ranker-lora-train", None),
    ("ranker-lora", "cotrec-init|cotrec-untuned", "ranker-lora|ranker-untuned", None),
]


def _phase(path: Path, phase: str) -> dict[str, float]:
    """``phases[phase]`` of a cell's results.json, or the ``llm`` costs of a prefill JSON."""
    data = json.loads(path.read_text())
    if not phase:
        return data["llm"] | {"seconds": data["seconds"]}
    return data["runs"][0]["phases"][phase]


def _source(base: Path, name: str, file: str, phase: str, unit: str | None
            ) -> tuple[str, str, str, str | None] | None:
    """The first alternative of ``file`` (and its ``phase``) that exists and is finished.

    A per-call phase (``unit`` set) counts only where it generated calls: one served wholly from
    the cache measured no rate.
    """
    for i, folder in enumerate(file.split("|")):
        path = base / folder if folder.endswith(".json") else base / folder / "results.json"
        if path.is_file() and json.loads(path.read_text()).get("status", "finished") == "finished":
            which = phase.split("|")[min(i, phase.count("|"))]
            if unit and not _phase(path, which).get("llm_calls", 0):
                continue
            return name, str(path.relative_to(base)), which, unit
    return None


def budget_table(out: Path, dataset: str = "ml-100k") -> str:
    r"""Empty-cache minutes of one full CoT-Rec cell from the measured per-stage rates.

    A perception phase costs :math:`t = (s / c) \cdot N`: ``s`` its measured seconds, ``c`` the
    LLM calls it generated (cache hits excluded), ``N`` the full cell's prompts (every item,
    every user: calls + cache hits of the source). Other phases count as measured (the ranker
    with LoRA re-scores the untuned ranker's prompts; LoRA training is the title-init cell's
    epoch). Returns "" when a source file is missing.
    """
    base = out / dataset / "central"
    sources = [_source(base, name, file, phase, unit) for name, file, phase, unit in BUDGET_SOURCES]
    if None in sources:
        return ""
    rows = ["| phase | measured in | LLM calls (cache hits) | seconds | s per call | "
            "full-cell calls | full-cell minutes |", "|" + "---|" * 7]
    total = 0.0
    for name, file, phase, unit in sources:
        p = _phase(base / file, phase)
        calls, hits, sec = int(p.get("llm_calls", 0)), int(p.get("llm_cache_hits", 0)), \
            float(p["seconds"])
        rate = sec / calls if calls else float("nan")  # n/a: a phase counted as measured
        full = calls + hits if unit else None
        minutes = (rate * full if unit else sec) / 60
        total += minutes
        rows.append(f"| {name} | {file.split('/')[0]} | {calls} ({hits}) | {sec:.0f} | "
                    f"{_f(rate, 2)} | {full if unit else 'as measured'} | {minutes:.1f} |")
    rows.append(f"| **total** | | | | | | **{total:.1f}** |")
    found = [(c, r) for c in FULL_CACHE_CELLS if (r := _finished(base / c)) is not None]
    if found:  # the same cell rerun with every call and stage cached, as measured
        cell, full = found[0]
        llm, secs = full.get("llm", {}), full["process_s"] or full["wall_s"]
        rows.append(f"| **total, full cache** (stage cache hits: {full.get('stage_cache_hits', 0)})"
                    f" | {cell} | {int(llm.get('llm_calls', 0))} "
                    f"({int(llm.get('llm_cache_hits', 0))}) | {secs:.0f} | | "
                    f"as measured | **{secs / 60:.1f}** |")
    return "\n".join(rows) + "\n"


#: The phases of a central run in the order they run (results.json stores them sorted).
PHASE_ORDER = ("item-perception", "user-perception", "retriever", "ranker-untuned",
               "ranker-lora-train", "ranker-lora")
#: The full ML-100K ``cotrec-init`` cell rerun with a full call cache and stage cache.
FULL_CACHE_CELL = "cotrec-init-fullcache"
#: Cells whose full-cache rerun ends the budget table, first found first (``cotrec-untuned``:
#: the same cell without LoRA).
FULL_CACHE_CELLS = (FULL_CACHE_CELL, "cotrec-untuned-fullcache")


def _finished(folder: Path) -> dict[str, Any] | None:
    """The run entry of a finished cell folder, else ``None``.

    ``process_s`` is added from the cell's ``bench.json`` (``None`` without one).
    """
    path = folder / "results.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("status") != "finished":
        return None
    run = data["runs"][0]
    timing = folder / "bench.json"
    return run | {"process_s": json.loads(timing.read_text())["process_seconds"]
                  if timing.is_file() else None}


def _min(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def _write_timing(out: Path, cell_seconds: float) -> None:
    """``bench.json``: the cell's seconds (LLM build included) and the process's so far.

    ``process_seconds`` runs from the Python process's start (``psutil``'s create time), so for
    the first cell of a process it is the whole command's cost: imports, model loads, run.
    """
    import psutil

    process = time.time() - psutil.Process().create_time()
    (out / "bench.json").write_text(json.dumps(
        {"cell_seconds": cell_seconds, "process_seconds": process}, indent=1) + "\n")


def stage_cache_table(out: Path) -> str:
    """Seconds per phase of each cell ``<x>-fill`` (empty stage cache) next to ``<x>-fullcache``.

    Both cells run the same config; the second finds every stage and every LLM call cached.
    Rows: each phase's seconds and LLM calls (cache hits) in both, the stage-cache events,
    the run's wall minutes (``wall_s``: from loading the split to the end; building the LLM
    and starting Python are outside it), the process's (``bench.json``; n/a for a cell
    without one) and whether its metrics (retriever, untuned and LoRA ranker) are equal.
    Returns "" when no pair is finished.
    """
    blocks = []
    for fill_path in sorted(out.glob("*/*/*-fill/results.json")):
        fill = _finished(fill_path.parent)
        cached = _finished(fill_path.parent.with_name(
            fill_path.parent.name.removesuffix("-fill") + "-fullcache"))
        if fill is None or cached is None:
            continue
        ds, setting, cell = fill_path.parts[-4:-1]
        rows = [f"**{ds} / {setting} / {cell.removesuffix('-fill')}**", "",
                "| phase | seconds, empty stage cache | LLM calls (hits) | seconds, full cache | "
                "LLM calls (hits) |", "|" + "---|" * 5]
        phases = fill.get("phases", {})
        for name, p in sorted(phases.items(), key=lambda kv: PHASE_ORDER.index(kv[0])
                              if kv[0] in PHASE_ORDER else len(PHASE_ORDER)):
            q = cached.get("phases", {}).get(name, {})
            rows.append(f"| {name} | {p['seconds']:.1f} | {int(p.get('llm_calls', 0))} "
                        f"({int(p.get('llm_cache_hits', 0))}) | {q.get('seconds', 0.0):.1f} | "
                        f"{int(q.get('llm_calls', 0))} ({int(q.get('llm_cache_hits', 0))}) |")
        ranker = [(r.get("ranker") or {}) for r in (fill, cached)]
        same = fill.get("metrics") == cached.get("metrics") and all(
            ranker[0].get(k, {}).get("ndcg@10") == ranker[1].get(k, {}).get("ndcg@10")
            for k in ("untuned", "lora"))
        events = ", ".join(f"{k} {v}" for k, v in cached.get("stage_cache", {}).items())
        rows += [f"| **run minutes** (`wall_s`) | **{fill['wall_s'] / 60:.1f}** | | "
                 f"**{cached['wall_s'] / 60:.1f}** | |",
                 f"| **process minutes** (Python start to cell end) | {_min(fill['process_s'])}"
                 f" | | {_min(cached['process_s'])} | |", "",
                 f"Stage cache of the second run: {events or 'none'}; metrics equal: "
                 f"{'yes' if same else 'NO'}."]
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks) + "\n" if blocks else ""


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
    return "\n".join(rows) + "\n\nMean ± sd over seeds (cells named ``<variant>-seed<s>``; "\
        "the bare name is seed 0):\n\n" + seed_table(out) + _budget_section(out) + \
        _stage_section(out)


def _stage_section(out: Path) -> str:
    table = stage_cache_table(out)
    return ("\nThe same cell twice: filling the stage cache (``-fill``), then with every stage "
            "and LLM call cached (``-fullcache``; ``stage_cache_table``):\n\n" + table
            if table else "")


def _budget_section(out: Path) -> str:
    table = budget_table(out)
    return ("\nEstimated minutes of a full ML-100K ``cotrec`` cell with an empty cache "
            "(measured per-stage rates x full scale, ``budget_table``; its last line, where "
            "present, is a cell rerun with every LLM call and trained stage cached, process "
            "seconds as measured):\n\n" + table
            if table else "")


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
