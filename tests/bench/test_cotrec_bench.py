"""bench/cotrec.py: variants parse, the budget table follows its formula, summary.md is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from florec.recdata.runconfig import parse_run_config

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "cotrec"


def test_every_variant_is_a_valid_run_config(bench_script) -> None:
    bench = bench_script("cotrec")
    for variant, keys in bench.VARIANTS.items():
        cfg = parse_run_config(bench.DEFAULTS | keys | {"dataset": "ml-100k"})
        assert cfg.model == "cotrec", variant
    untuned = parse_run_config(bench.DEFAULTS | bench.VARIANTS["cotrec-untuned"])
    assert (untuned.cotrec_init, untuned.cotrec_ranker) == ("cotrec", "untuned")


def _cell(path: Path, phases: dict[str, dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": "finished", "runs": [{"phases": phases}]}))


def _budget_sources(base: Path) -> None:
    """The per-stage sources budget_table reads: item perception, one cell, one LoRA cell."""
    (base / "perception-items.json").write_text(json.dumps(
        {"seconds": 100.0, "llm": {"llm_calls": 50, "llm_cache_hits": 50}}))
    _cell(base / "cotrec-untuned" / "results.json", {
        "user-perception": {"seconds": 30.0, "llm_calls": 10, "llm_cache_hits": 5},
        "retriever": {"seconds": 120.0},
        "ranker-untuned": {"seconds": 60.0, "llm_calls": 20, "llm_cache_hits": 0}})
    _cell(base / "title-llm-ranker" / "results.json", {"ranker-lora-train": {"seconds": 240.0}})


def test_budget_scales_perception_by_seconds_per_generated_call(bench_script,
                                                                tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    base = tmp_path / "ml-100k" / "central"
    assert bench.budget_table(tmp_path) == ""  # no sources yet
    (base).mkdir(parents=True)
    _budget_sources(base)
    table = bench.budget_table(tmp_path)
    rows = {r.split("|")[1].strip(): r for r in table.splitlines()[2:]}
    # items: 2 s per generated call x 100 prompts = 200 s; users: 3 s x 15 = 45 s
    assert rows["item-perception"].endswith("| 100 | 3.3 |")
    assert rows["user-perception"].endswith("| 15 | 0.8 |")
    expected = (200 + 45 + 120 + 60 + 240 + 60) / 60
    assert f"**{expected:.1f}**" in rows["**total**"]
    # a finished LoRA cell (cotrec-init) replaces the title cell's training and the untuned
    # ranker's prompts as the source of the two LoRA phases
    _cell(base / "cotrec-init" / "results.json", {"ranker-lora-train": {"seconds": 600.0},
                                                  "ranker-lora": {"seconds": 90.0}})
    table = bench.budget_table(tmp_path)
    assert "| ranker-lora-train | cotrec-init |" in table
    expected = (200 + 45 + 120 + 60 + 600 + 90) / 60
    assert f"**{expected:.1f}**" in table
    # a rerun served wholly from the cache measured no rate: no budget rather than NaN
    _cell(base / "cotrec-untuned" / "results.json", {
        "user-perception": {"seconds": 1.0, "llm_calls": 0, "llm_cache_hits": 15},
        "retriever": {"seconds": 120.0}, "ranker-untuned": {"seconds": 60.0}})
    assert bench.budget_table(tmp_path) == ""


def test_committed_summary_is_what_the_script_writes(bench_script) -> None:
    if not (RESULTS / "summary.md").is_file():
        pytest.skip("no committed CoT-Rec results")
    assert (RESULTS / "summary.md").read_text() == bench_script("cotrec").summary(RESULTS)


def _run_cell(path: Path, run: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"status": "finished", "runs": [run]}))


def test_budget_adds_the_full_cache_rerun_as_measured(bench_script, tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    base = tmp_path / "ml-100k" / "central"
    base.mkdir(parents=True)
    _budget_sources(base)
    assert "full cache" not in bench.budget_table(tmp_path)
    _run_cell(base / bench.FULL_CACHE_CELL, {"wall_s": 150.0, "stage_cache_hits": 2,
                                             "llm": {"llm_calls": 0, "llm_cache_hits": 700}})
    row = bench.budget_table(tmp_path).splitlines()[-1]
    assert row.startswith("| **total, full cache** (stage cache hits: 2) | cotrec-init-fullcache")
    assert row.endswith("| 0 (700) | 150 | | as measured | **2.5** |")
    # the process's seconds (imports and model loads included) replace the run's when recorded
    (base / bench.FULL_CACHE_CELL / "bench.json").write_text(json.dumps(
        {"cell_seconds": 160.0, "process_seconds": 174.0}))
    row = bench.budget_table(tmp_path).splitlines()[-1]
    assert row.endswith("| 174 | | as measured | **2.9** |")


def test_stage_cache_table_pairs_fill_and_fullcache_cells(bench_script, tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    cells = tmp_path / "ml-100k" / "central"
    metrics, ranker = {"ndcg@10": 0.1}, {"untuned": {"ndcg@10": 0.09}, "lora": {"ndcg@10": 0.08}}
    _run_cell(cells / "cotrec-init-fill", {
        "wall_s": 600.0, "metrics": metrics, "ranker": ranker,
        "phases": {"retriever": {"seconds": 240.0}, "ranker-lora-train": {"seconds": 300.0}}})
    assert bench.stage_cache_table(tmp_path) == ""  # no pair yet
    _run_cell(cells / "cotrec-init-fullcache", {
        "wall_s": 60.0, "metrics": metrics, "ranker": ranker,
        "stage_cache": {"cotrec-retriever": "hit", "cotrec-lora": "hit"},
        "phases": {"retriever": {"seconds": 0.5}, "ranker-lora-train": {"seconds": 0.2}}})
    table = bench.stage_cache_table(tmp_path)
    assert "| retriever | 240.0 | 0 (0) | 0.5 | 0 (0) |" in table
    assert "| **run minutes** (`wall_s`) | **10.0** | | **1.0** | |" in table
    assert "| **process minutes** (Python start to cell end) | n/a | | n/a | |" in table
    (cells / "cotrec-init-fullcache" / "bench.json").write_text(json.dumps(
        {"cell_seconds": 70.0, "process_seconds": 90.0}))
    table = bench.stage_cache_table(tmp_path)
    assert "| **process minutes** (Python start to cell end) | n/a | | 1.5 | |" in table
    assert "cotrec-retriever hit, cotrec-lora hit; metrics equal: yes." in table
    # the retriever's metrics on the ranker's candidates are recomputed, not call-cached
    _run_cell(cells / "cotrec-init-fullcache", {
        "wall_s": 60.0, "metrics": metrics, "phases": {},
        "ranker": ranker | {"retriever": {"ndcg@10": 0.05, "coverage": 0.9}}})
    _run_cell(cells / "cotrec-init-fill", {
        "wall_s": 600.0, "metrics": metrics, "phases": {},
        "ranker": ranker | {"retriever": {"ndcg@10": 0.06, "coverage": 0.9}}})
    assert "metrics equal: NO." in bench.stage_cache_table(tmp_path)
    ranker["lora"] = {"ndcg@10": 0.07}
    _run_cell(cells / "cotrec-init-fullcache", {
        "wall_s": 60.0, "metrics": metrics, "ranker": ranker, "phases": {}})
    _run_cell(cells / "cotrec-init-fill", {
        "wall_s": 600.0, "metrics": metrics, "ranker": {"lora": {"ndcg@10": 0.08}},
        "phases": {}})
    assert "metrics equal: NO." in bench.stage_cache_table(tmp_path)


def test_the_report_tables_live_in_cotrec_report(bench_script) -> None:
    bench = bench_script("cotrec")
    for name in ("stage_cache_table", "budget_table", "_finished", "_write_timing"):
        assert getattr(bench, name).__module__ == "cotrec_report", name
