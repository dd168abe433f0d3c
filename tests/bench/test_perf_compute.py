"""bench/perf_compute.py --perf-table: the framework-cost table from florec perf --json rows."""

from __future__ import annotations

import json


def row(**extra: object) -> dict:
    return {"dataset": "ml-1m", "algorithm": "fedavg-mf-dense", "population": 6040,
            "cohort": 1.0, "bucket": 100, "nodes": 61, "workers": 2, "s_per_round": 5.0,
            "s_per_round_in_process": 6.0, "framework_ms_per_update": 0.33,
            "peak_pss_mb": 1834.4, "bytes_per_round": 3 * 2**20} | extra


def test_perf_table_has_one_line_per_row_and_derives_the_framework_seconds(bench_script) -> None:
    compute = bench_script("perf_compute")
    table = compute.perf_table([row(load_avg_1m=[3.04, 5.96], local_round_over_central_epoch=0.8),
                                row(cohort=0.1)])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == len(compute.PERF_COLUMNS) + 1
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    named = dict(zip([name for name, _ in compute.PERF_COLUMNS], cells, strict=True))
    assert named["framework s/round"] == "2.00"  # 5.0 - 6.0 / 2 actors
    assert named["users"] == "6,040" and named["aggregation"] == "dense"
    assert named["local round / central epoch"] == "0.80x"
    assert named["load (1 min, start-end)"] == "3.0-6.0" and named["MB/round"] == "3.0"
    last = [c.strip() for c in lines[3].strip("|").split("|")]
    assert last[3] == "0.1" and "-" in last and "?" in last  # no ratio, no load recorded


def test_seq_table_reads_the_before_run_from_its_own_folder(bench_script, tmp_path) -> None:
    compute = bench_script("perf_compute")

    def write(root, variant, hr):
        (root / variant).mkdir(parents=True)
        lines = [json.dumps({"round": e, "valid": {"hr@10": h, "ndcg@10": h / 2}})
                 for e, h in enumerate(hr, 1)]
        (root / variant / "rounds.jsonl").write_text("\n".join(lines) + "\n")

    write(tmp_path / "v1", "before", [0.1, 0.2])
    write(tmp_path / "v2", "after", [0.15, 0.25])
    lines = compute.seq_metrics_table(tmp_path / "v2", before_root=tmp_path / "v1").splitlines()
    assert len(lines) == 4
    assert lines[3] == "| 2 | 0.2000 | 0.2500 | 0.1000 | 0.1250 |"
