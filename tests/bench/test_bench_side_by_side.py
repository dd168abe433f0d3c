"""Before/after in one bench run: deploy_rounds' medians over repeats, perf_memory's compare."""

from __future__ import annotations

import json

import pytest


def summary(round_s: float, imports: float) -> dict:
    return {"round_s": round_s, "messages_per_round": 4, "message_s": round_s / 4,
            "node_s_per_round": round_s - 6, "polling_and_server_s_per_round": 6.0,
            "wall_s": 3 * round_s, "load_avg_before": (round_s, 0, 0),
            "phases_s": {"imports": imports, "work": 0.1}, "app": "x", "fab_bytes": 10,
            "fab_files": 2}


def test_deploy_rounds_reports_the_median_of_each_number_over_the_repeats(bench_script):
    mod = bench_script("deploy_rounds")
    runs = [summary(30.0, 7.0), summary(20.0, 9.0), summary(50.0, 8.0)]
    res = mod.median_summary(runs)
    assert res["round_s"] == 30.0 and res["message_s"] == pytest.approx(7.5)
    assert res["phases_s"]["imports"] == 8.0 and res["phases_s"]["hand-off"] == 0.0
    assert res["load_avg_1min"] == [30.0, 20.0, 50.0] and res["runs"] is runs
    table = mod.table({"settings": {"after": {"apps": {"floor": res | {
        "ratio_to_floor": 1.0, "ratios_to_floor": [1.0, 1.0]}}}}})
    assert "| ratio to its floor, each repeat | 1.00, 1.00 |" in table


def row(users: int, pss: float, actor: float) -> dict:
    procs = [{"cmd": "ray::ClientAppActor", "pss_mb": actor},
             {"cmd": "flower-superlink --insecure", "pss_mb": pss - actor}]
    return {"users": users, "peak_pss_mb": pss, "peak_rss_mb": 1.5 * pss, "processes": procs}


def test_perf_memory_compare_puts_before_and_after_of_each_point_side_by_side(
        bench_script, tmp_path):
    mod = bench_script("perf_memory")
    for label, pss in (("before", 2000.0), ("after", 1500.0), ("after-lean-ray", 1400.0)):
        (tmp_path / label).mkdir()
        (tmp_path / label / "p.json").write_text(json.dumps(row(100, pss, pss / 2)))
    (tmp_path / "after" / "only_after.json").write_text(json.dumps(row(5, 1.0, 0.5)))
    lines = mod.compare(tmp_path).splitlines()
    assert len(lines) == 3  # header, rule, the one point measured both ways
    assert lines[2] == "| p | 100 | 2000 | 1500 | 0.75 | 1000 | 750 | 3000 | 2250 | 1400 |"


def test_perf_memory_refuses_a_before_app_that_is_not_a_florec_folder(bench_script, tmp_path):
    mod = bench_script("perf_memory")
    with pytest.raises(SystemExit, match="not a FloRec folder"):
        mod.app_env({}, tmp_path)
    (tmp_path / "florec").mkdir()
    (tmp_path / "florec" / "__init__.py").write_text("")
    env, cwd = mod.app_env({"PYTHONPATH": "/x"}, tmp_path / "florec")
    assert env["PYTHONPATH"].split(":") == [str(tmp_path.resolve()), "/x"]
    assert cwd == tmp_path.resolve()
