"""bench/fedcia_align_speed.py: dense and eigenbasis alignment, side by side."""

from __future__ import annotations


def test_both_alignments_are_timed_and_agree(bench_script) -> None:
    speed = bench_script("fedcia_align_speed")
    row = speed.measure(items=60, clients=2, dim=4, steps=5, repeats=2)
    assert len(row["dense_s"]) == len(row["eigen_s"]) == 2
    assert row["ratio_eigen_over_dense"] == row["eigen_median_s"] / row["dense_median_s"]
    assert row["server_eigensolve_s"] > 0
    assert row["max_table_difference"] < 1e-4
