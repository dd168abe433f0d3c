"""bench/cotrec.py: variants parse, the budget and stage-cache tables, summary.md is current."""

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


def test_committed_summary_is_what_the_script_writes(bench_script) -> None:
    if not (RESULTS / "summary.md").is_file():
        pytest.skip("no committed CoT-Rec results")
    assert (RESULTS / "summary.md").read_text() == bench_script("cotrec").summary(RESULTS)


def _run_cell(path: Path, run: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"status": "finished", "runs": [run]}))


def test_budget_table_sets_the_empty_and_full_cache_cells_against_the_budget(
        bench_script, tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    base = tmp_path / "ml-100k" / "central"
    assert bench.budget_table(tmp_path) == ""  # no cell yet
    _run_cell(base / bench.EMPTY_CACHE_CELL, {"wall_s": 700.0, "stage_cache_hits": 0,
                                              "llm": {"llm_calls": 3000, "llm_cache_hits": 30}})
    rows = bench.budget_table(tmp_path).splitlines()
    assert rows[2] == "| empty | cotrec-init-empty | 3000 (30) | 0 | 700 | **11.7** | < 70 | yes |"
    # the process's seconds (imports and model loads included) replace the run's when recorded
    (base / bench.EMPTY_CACHE_CELL / "bench.json").write_text(json.dumps(
        {"cell_seconds": 4300.0, "process_seconds": 4320.0}))
    assert bench.budget_table(tmp_path).splitlines()[2].endswith("| 4320 | **72.0** | < 70 | no |")
    # a full-cache rerun of the cell without LoRA stands in until the LoRA cell's exists
    _run_cell(base / "cotrec-untuned-fullcache", {"wall_s": 40.0, "stage_cache_hits": 1,
                                                 "llm": {"llm_calls": 0, "llm_cache_hits": 9}})
    assert "| full | cotrec-untuned-fullcache | 0 (9) | 1 | 40 |" in bench.budget_table(tmp_path)
    _run_cell(base / bench.FULL_CACHE_CELL, {"wall_s": 150.0, "stage_cache_hits": 2,
                                             "llm": {"llm_calls": 0, "llm_cache_hits": 700}})
    assert bench.budget_table(tmp_path).splitlines()[-1] == \
        "| full | cotrec-init-fullcache | 0 (700) | 2 | 150 | **2.5** | < 5 | yes |"


def test_stage_cache_table_pairs_an_empty_cache_cell_with_its_fullcache_rerun(
        bench_script, tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    cells = tmp_path / "ml-100k" / "central"
    run = {"wall_s": 720.0, "metrics": {"ndcg@10": 0.1}, "ranker": {},
           "phases": {"item-perception": {"seconds": 90.0, "llm_calls": 1664}}}
    _run_cell(cells / "cotrec-init-empty", run)
    assert bench.stage_cache_table(tmp_path) == ""
    _run_cell(cells / "cotrec-init-fullcache", run | {"wall_s": 12.0, "phases": {
        "item-perception": {"seconds": 0.4, "llm_cache_hits": 1664}}})
    table = bench.stage_cache_table(tmp_path)
    assert table.startswith("**ml-100k / central / cotrec-init-empty** vs `cotrec-init-fullcache`")
    assert "| item-perception | 90.0 | 1664 (0) | 0.4 | 0 (1664) |" in table
    assert "| **run minutes** (`wall_s`) | **12.0** | | **0.2** | |" in table


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


def test_seed_table_groups_seeds_with_the_empty_cache_cell_and_averages_the_ranker(
        bench_script, tmp_path: Path) -> None:
    bench = bench_script("cotrec")
    cells = tmp_path / "ml-100k" / "central"
    for cell, ndcg, lora in (("cotrec-init-empty", 0.10, 0.08),
                             ("cotrec-init-seed1", 0.12, 0.06), ("cotrec-init-seed2", 0.11, None),
                             ("cotrec-init-fullcache", 0.5, 0.5)):
        ranker = {"untuned": {"ndcg@10": ndcg - 0.01, "mapb": 2.5}}
        if lora is not None:
            ranker["lora"] = {"ndcg@10": lora, "mapb": 2.4}
        _run_cell(cells / cell, {"metrics": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}, "ranker": ranker})
    _run_cell(cells / "sasrec-random", {"metrics": {"ndcg@10": 0.09, "hr@10": 0.18}})
    _run_cell(cells / "sasrec-random-seed1", {"metrics": {"ndcg@10": 0.07, "hr@10": 0.16}})
    rows = {r.split(" | ")[2]: r for r in bench.seed_table(tmp_path).splitlines()[2:]}
    # the full-cache rerun is a cell of its own (one run: no row), not a fourth seed
    assert set(rows) == {"cotrec-init", "sasrec-random"}
    assert rows["cotrec-init"] == ("| ml-100k | central | cotrec-init | 3 | 0.1100 ± 0.0100 | "
                                   "0.2200 ± 0.0200 | 0.1000 ± 0.0100 | 2.50 ± 0.00 | "
                                   "0.0700 ± 0.0141 (2) | 2.40 ± 0.00 (2) |")
    assert rows["sasrec-random"].endswith(
        "| 2 | 0.0800 ± 0.0141 | 0.1700 ± 0.0141 | – | – | – | – |")
