"""bench/fair_trainer_diff.py: the fair bucket trainer against the test's autograd reference."""

from __future__ import annotations

SMALL = {"synthetic-users": 30, "synthetic-items": 40, "synthetic-interactions": 6,
         "users-per-node": 10, "dim": 8, "local-batch-size": 8, "lr": 0.05}


def test_fair_trainer_diff_reports_rounding_sized_gaps_on_moving_rows(bench_script) -> None:
    rows = bench_script("fair_trainer_diff").diff("synthetic", ["ubpr", "wmf"], 1, SMALL)
    assert [r["loss"] for r in rows] == ["ubpr", "wmf"]
    for r in rows:
        assert r["users"] == 10 and r["bucket"] == 1
        assert r["max_abs_reference_delta"] > 1e-2  # the reference moved: not vacuous
        assert r["max_abs_diff_delta"] < 1e-5 and r["max_abs_diff_user_emb"] < 1e-5
        assert r["loss_rel_diff"] < 1e-5
