"""Tables of bench/cotrec.py's summary.md: the empty-cache budget and the stage-cache pairs.

``budget_table`` sets the full ML-100K ``cotrec-init`` cell, run from empty caches and rerun
with every call and stage cached, against the issue's budget; ``stage_cache_table`` sets each
``<x>-fill`` cell (empty stage cache) or ``<x>-empty`` cell (every cache empty) beside
``<x>-fullcache`` (the same config, every stage and LLM call cached). ``_write_timing`` writes
the ``bench.json`` both read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


#: The phases of a central run in the order they run (results.json stores them sorted).
PHASE_ORDER = ("item-perception", "user-perception", "retriever", "ranker-untuned",
               "ranker-lora-train", "ranker-lora")
#: The full ML-100K ``cotrec-init`` cell rerun with a full call cache and stage cache.
FULL_CACHE_CELL = "cotrec-init-fullcache"
#: The full ML-100K ``cotrec-init`` cell run from empty call, embedding and stage caches (a fresh
#: ``FLOREC_CACHE_DIR``): the budget measured end to end.
EMPTY_CACHE_CELL = "cotrec-init-empty"
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
    """Seconds per phase of each cell ``<x>-fill`` or ``<x>-empty`` next to ``<x>-fullcache``.

    ``-fill`` ran with an empty stage cache, ``-empty`` with every cache empty (a fresh
    ``FLOREC_CACHE_DIR``: LLM calls, embeddings, stages); both run the same config as the
    ``-fullcache`` cell, which finds every stage and every LLM call cached.
    Rows: each phase's seconds and LLM calls (cache hits) in both, the stage-cache events,
    the run's wall minutes (``wall_s``: from loading the split to the end; building the LLM
    and starting Python are outside it), the process's (``bench.json``; n/a for a cell
    without one) and whether its metrics are equal (the retriever's test metrics, its metrics
    on the ranker's candidates ``ranker["retriever"]``, the untuned and LoRA ranker's).
    Returns "" when no pair is finished.
    """
    blocks = []
    firsts = sorted([*out.glob("*/*/*-fill/results.json"), *out.glob("*/*/*-empty/results.json")])
    for fill_path in firsts:
        fill = _finished(fill_path.parent)
        name = fill_path.parent.name.rsplit("-", 1)[0]
        cached = _finished(fill_path.parent.with_name(name + "-fullcache"))
        if fill is None or cached is None:
            continue
        ds, setting, cell = fill_path.parts[-4:-1]
        rows = [f"**{ds} / {setting} / {cell}** vs `{name}-fullcache`", "",
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
        # the retriever's metrics on the ranker's candidates are recomputed from the loaded
        # weights (not answered by the LLM call cache): they test the stored retriever too
        same = fill.get("metrics") == cached.get("metrics") and \
            ranker[0].get("retriever") == ranker[1].get("retriever") and all(
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


#: The issue's budget for one full ML-100K ``cotrec`` cell on 2 cores, in minutes.
BUDGET_MINUTES = {"empty": 70.0, "full": 5.0}


def budget_table(out: Path, dataset: str = "ml-100k") -> str:
    """Minutes of the full ML-100K ``cotrec-init`` cell against the issue's budget, as measured.

    Two rows: the cell run from empty caches (``EMPTY_CACHE_CELL``) and rerun with every LLM
    call and trained stage cached (the first finished cell of ``FULL_CACHE_CELLS``). Seconds
    are the process's (Python start to the cell's end, ``bench.json``), else the run's
    ``wall_s``. Returns "" when neither cell is finished.
    """
    base = out / dataset / "central"
    rows = ["| caches | cell | LLM calls (cache hits) | stage cache hits | seconds | minutes | "
            "budget (minutes) | met |", "|" + "---|" * 8]
    for what, cells in (("empty", (EMPTY_CACHE_CELL,)), ("full", FULL_CACHE_CELLS)):
        found = [(c, r) for c in cells if (r := _finished(base / c)) is not None]
        if not found:
            continue
        cell, run = found[0]
        llm, secs = run.get("llm") or {}, run["process_s"] or run["wall_s"]
        limit = BUDGET_MINUTES[what]
        rows.append(f"| {what} | {cell} | {int(llm.get('llm_calls', 0))} "
                    f"({int(llm.get('llm_cache_hits', 0))}) | {run.get('stage_cache_hits', 0)} | "
                    f"{secs:.0f} | **{secs / 60:.1f}** | < {limit:.0f} | "
                    f"{'yes' if secs / 60 < limit else 'no'} |")
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def _stage_section(out: Path) -> str:
    table = stage_cache_table(out)
    return ("\nThe same cell twice: filling the stage cache (``-fill``) or every cache "
            "(``-empty``), then with every stage and LLM call cached (``-fullcache``; "
            "``stage_cache_table``):\n\n" + table if table else "")


def _budget_section(out: Path) -> str:
    table = budget_table(out)
    return ("\nThe full ML-100K ``cotrec-init`` cell against the issue's budget, from empty "
            "caches and from full ones (``budget_table``):\n\n" + table if table else "")
