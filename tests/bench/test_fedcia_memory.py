"""bench/fedcia_memory.py: the server's peak memory of one dense FedCIA round."""

from __future__ import annotations


def test_peak_holds_the_accumulator_and_stops_growing_with_more_clients(bench_script) -> None:
    mem = bench_script("fedcia_memory")
    some, many = mem.peak_mb(300, 20), mem.peak_mb(300, 80)
    assert some["accumulator_mb"] == 300 * 300 * 8 / 2**20
    assert some["peak_mb"] >= some["accumulator_mb"] + some["upload_mb"]
    # 60 more uploads (20 MiB if the server held them) cost less than a tenth of that
    assert many["peak_mb"] - some["peak_mb"] < 0.1 * 60 * many["upload_mb"], (some, many)


def test_the_eigensolve_is_measured_in_a_fresh_process(bench_script) -> None:
    mem = bench_script("fedcia_memory")
    solve = mem.eigensolve_peak(1200)
    assert solve["items"] == 1200
    # at least its eigenvectors (one n x n float64), at most a few dozen matrices
    assert 0.9 < solve["eigensolve_matrices"] < 30, solve
