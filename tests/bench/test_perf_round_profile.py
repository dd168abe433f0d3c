"""bench/perf_round_profile.py: one timed in-process round, split into training and the rest."""

from __future__ import annotations

import json


def test_the_timed_round_holds_the_nodes_which_hold_the_local_training(bench_script, tmp_path):
    bench = bench_script("perf_round_profile")
    row, prof = bench.run("synthetic", 20, "sparse", True, tmp_path / "run", population=60)
    assert row["nodes"] == 3
    assert 0 < row["local_update_s"] < row["node_s"] < row["round_s"]
    assert abs(row["non_training_s"] - (row["round_s"] - row["local_update_s"])) < 1e-9
    assert abs(row["server_s"] - (row["round_s"] - row["node_s"])) < 1e-9
    tables = bench.print_profile(prof, 20)
    assert "by cumulative" in tables and "by tottime" in tables and "local_update" in tables


def test_the_command_line_appends_one_json_line(bench_script, tmp_path, capsys):
    bench = bench_script("perf_round_profile")
    out = tmp_path / "side.jsonl"
    for _ in range(2):
        bench.main(["--dataset", "synthetic", "--population", "40", "--bucket", "20",
                    "--json", str(out), "--work-dir", str(tmp_path)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["aggregation"] == "sparse" for r in rows)
    assert "round_s" in capsys.readouterr().out
