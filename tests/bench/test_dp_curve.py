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
