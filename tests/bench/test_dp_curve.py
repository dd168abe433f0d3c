"""bench/dp_curve.py: the DP privacy-utility table is rebuilt from the committed bench results."""

from __future__ import annotations

import copy
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "dp"


def test_committed_dp_table_is_what_the_generator_writes(bench_script) -> None:
    curve = bench_script("dp_curve")
    rows = curve.rows_of(json.loads((RESULTS / "results.json").read_text()))
    assert (RESULTS / "summary.md").read_text() == curve.table(rows)
    assert {r["label"] for r in rows} >= {"Pop", "DP eps=1", "DP eps=8"}


def test_rows_take_each_methods_mean_and_the_accountants_epsilon(bench_script) -> None:
    curve = bench_script("dp_curve")
    results = json.loads((RESULTS / "results.json").read_text())
    fake = copy.deepcopy(results)
    eps4 = [r for r in fake["runs"] if r["label"] == "DP eps=4"]
    for i, run in enumerate(eps4):
        run["metrics"]["ndcg@10"] = 0.1 * (i + 1)
        run["dp"]["epsilon"] = 3.99
    row = next(r for r in curve.rows_of(fake) if r["label"] == "DP eps=4")
    assert abs(row["ndcg@10"] - 0.1 * (len(eps4) + 1) / 2) < 1e-12
    assert row["epsilon"] == 3.99 and row["target_epsilon"] == 4.0


ML1M = RESULTS.parent / "dp_ml1m"


def test_committed_ml1m_sweep_table_is_what_the_generator_writes(bench_script) -> None:
    curve = bench_script("dp_curve")
    rows = curve.sweep_rows(json.loads((ML1M / "sweep" / "results.json").read_text()))
    assert (ML1M / "sweep" / "sweep.md").read_text() == curve.sweep_table(rows)
    # the sweep is read on validation and names what it varied
    dp_rows = [r for r in rows if r["target_epsilon"] == 4.0]
    assert {r["clip"] for r in dp_rows} >= {0.02, 0.1, 0.5}
    assert all(0 < r["valid_ndcg@10"] < 1 for r in rows)
    # the non-private setting the curve uses is above Pop on validation only with the refit
    pop = next(r["valid_ndcg@10"] for r in rows if r["label"] == "Pop")
    plain = {r["refit"] > 0: r["valid_ndcg@10"] for r in rows
             if r["target_epsilon"] is None and r["q"] == 0.1 and r["lr"] == 0.5}
    assert plain[True] > pop + 0.02 and plain[False] < pop + 0.005


def test_committed_ml1m_curve_is_what_the_generator_writes(bench_script) -> None:
    curve = bench_script("dp_curve")
    rows = curve.rows_of(json.loads((ML1M / "results.json").read_text()))
    assert (ML1M / "summary.md").read_text() == curve.table(rows)
    private = [r for r in rows if r["epsilon"] is not None]
    assert private and all(abs(r["epsilon"] - r["target_epsilon"]) < 0.01 for r in private)
    assert all(abs(r["delta"] - 1 / 6040) < 1e-12 for r in private)
    # the curve's claim: the non-private run (with the user refit) is above Pop on test
    ndcg = {r["label"]: r["ndcg@10"] for r in rows}
    assert ndcg["FedAvg-MF (no DP)"] > ndcg["Pop"] + 0.02 > ndcg["FedAvg-MF (no DP, no refit)"]


def test_committed_fedcia_dp_table_is_what_the_generator_writes(bench_script) -> None:
    report = bench_script("dp_fedcia_report")
    out = RESULTS.parent / "dp_fedcia"
    rows = report.rows_of(out)
    assert (out / "summary.md").read_text() == report.table(rows)
    noised = [r for r in rows if r["epsilon"] is not None]
    assert noised and all(r["clip"] == 300 for r in noised)
