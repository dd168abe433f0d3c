"""Tables of bench/cotrec.py's summary.md: the empty-cache budget and the stage-cache pairs.

``budget_table`` estimates a full ML-100K ``cotrec`` cell from measured per-stage rates (its
last line: a cell rerun with every call and stage cached, as measured); ``stage_cache_table``
sets each ``<x>-fill`` cell (empty stage cache) beside ``<x>-fullcache`` (the same config, every
stage and LLM call cached). ``_write_timing`` writes the ``bench.json`` both read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


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
    without one) and whether its metrics are equal (the retriever's test metrics, its metrics
    on the ranker's candidates ``ranker["retriever"]``, the untuned and LoRA ranker's).
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
