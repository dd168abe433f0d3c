"""bench/fedcia_batched_equal.py: batched FedCIA-MF clients against one-by-one training."""

import numpy as np

SYNTH = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 8, "split": "ratio", "partition": "contiguous",
         "num-nodes": 2, "clients-per-node": 3, "local-batch-size": 16}


def test_compare_reports_no_difference_on_a_small_federation(bench_script) -> None:
    bench = bench_script("fedcia_batched_equal")
    rows = bench.compare(bench.FEDCIA | SYNTH, 2)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["entries_differing"] == 0 and row["max_abs_loss_diff"] == 0
        assert {"model/item_emb", "optimizer/1.exp_avg", "optimizer/0.step"} <= set(
            row["max_abs_diff"])


def test_dense_expands_compact_item_moments_with_zeros(bench_script) -> None:
    bench = bench_script("fedcia_batched_equal")
    state = {"model": {"user_emb": np.ones((1, 2)), "item_emb": np.ones((4, 2)),
                       "item_bias": np.ones(4)},
             "optimizer": {"1.rows": np.array([1, 3]), "1.exp_avg": np.full((2, 2), 5.0),
                           "1.step": np.array([2.0])}}
    out = bench.dense(state)
    assert out["optimizer/1.exp_avg"].tolist() == [[0, 0], [5, 5], [0, 0], [5, 5]]
    assert out["optimizer/1.step"].tolist() == [2.0] and "optimizer/1.rows" not in out
