"""bench/perf_ray_inline.py and bench/perf_cpu_by_process.py: their tables from raw rows."""

from __future__ import annotations

import pytest


def _perf_row(size, s_round, s_local, pss, rss, load=1.0):
    return {"ray_max_direct_call_object_size": size, "dataset": "ml-1m", "s_per_round": s_round,
            "s_per_round_in_process": s_local, "peak_pss_mb": pss, "peak_mem_mb": rss,
            "load_avg_1m": [load, load + 0.5]}


def test_the_inline_table_pairs_alternated_runs_and_takes_the_median_ratio(bench_script):
    bench = bench_script("perf_ray_inline")
    rows = [_perf_row(102400, 2.0, 3.0, 100, 200), _perf_row(8 << 20, 1.0, 3.0, 110, 200),
            _perf_row(102400, 4.0, 3.0, 100, 200), _perf_row(8 << 20, 3.0, 3.0, 110, 200),
            _perf_row(102400, 2.0, 3.0, 100, 200), _perf_row(8 << 20, 1.8, 3.0, 110, 200, 2.0)]
    table = bench.table(rows)
    # pair ratios 0.5, 0.75, 0.9: median 0.75; medians of the settings 2.0 and 1.8
    assert "| flwr + Ray round | 2.00 s | 1.80 s | 0.750x |" in table
    assert "| peak PSS of the process tree | 100.00 MB | 110.00 MB | 1.100x |" in table
    assert "inline up to 8 MiB" in table and "6 runs, ml-1m, 1-minute load 1.00-2.50" in table


def test_cpu_rates_count_only_the_seconds_in_which_the_actors_were_busy(bench_script):
    bench = bench_script("perf_cpu_by_process")
    actor, sim = "ray::ClientAppActor.run", "python flwr-simulation --x"

    def sample(t, a, s):
        return {"t": t, "procs": {"1": [actor, a], "2": [sim, s]}}

    # second 1: actors idle (start-up); seconds 2-3: actors 1.5 CPU-s/s, simulation 0.25
    rows = [sample(0, 0.0, 0.0), sample(1, 0.1, 0.9), sample(2, 1.6, 1.15),
            sample(3, 3.1, 1.40)]
    table = bench.table(rows)
    assert "| ray::ClientAppActor | 1.500 |" in table
    assert "| flwr-simulation | 0.250 |" in table
    assert "2 one-second samples with busy actors" in table
    driver = "/usr/bin/python -m florec.sim.cli perf --datasets ml-1m"
    assert bench.role(driver) == "perf --datasets"
    assert bench.role("something else") == "other"


@pytest.mark.parametrize("name", ["perf_ray_inline", "perf_cpu_by_process"])
def test_the_scripts_print_their_committed_tables(bench_script, name, capsys, monkeypatch):
    from pathlib import Path

    raw = {"perf_ray_inline": "ab_ml1m.jsonl", "perf_cpu_by_process": "cpu_by_process_ml1m.jsonl"}
    path = Path(__file__).resolve().parents[2] / "docs/results/perf/ray_inline" / raw[name]
    monkeypatch.setattr("sys.argv", [name, "--table", str(path)])
    bench_script(name).main()
    assert capsys.readouterr().out.startswith("| ")
