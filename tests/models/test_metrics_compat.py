import math

import numpy as np
import pytest
import torch

from florec.models.metrics import finalize, ranking_metric_sums, topk_items
from florec.models.metrics_compat import f1_of_means, fedcia_compat_mrr, fedcia_compat_ndcg


def d(r: int) -> float:
    return 1.0 / math.log2(r + 1)


def scores_in_id_order(n_users: int, n_items: int) -> torch.Tensor:
    """Scores that rank item 0 first, then 1, 2, ... for every user."""
    return -torch.arange(n_items, dtype=torch.float64).repeat(n_users, 1)


def standard(topk: list[int], truth: set, k: int) -> dict[str, float]:
    """FloRec's metrics of one user whose ranked list starts with ``topk``."""
    n_items = max(max(topk), max(truth)) + 1
    rest = [i for i in range(n_items) if i not in topk]
    scores = torch.empty(1, n_items, dtype=torch.float64)
    scores[0, topk + rest] = -torch.arange(n_items, dtype=torch.float64)
    assert topk_items(scores, k)[0].tolist() == topk[:k]
    return finalize(ranking_metric_sums(scores, [np.array(sorted(truth))], [k]))


def test_f1_of_means_on_the_worked_example():
    # evaluation.md section 4, K=5: A hits at ranks 1, 3 (|T|=2); B at ranks 2, 5 (|T|=3)
    truth = [np.array([0, 2]), np.array([1, 4, 7])]
    means = finalize(ranking_metric_sums(scores_in_id_order(2, 10), truth, [5]))
    assert means["precision@5"] == pytest.approx(0.4)
    assert means["recall@5"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert round(means["f1@5"], 4) == 0.5357
    assert round(f1_of_means(means, 5), 4) == 0.5405


def test_f1_of_means_is_zero_without_hits_and_needs_both_means():
    assert f1_of_means({"precision@10": 0.0, "recall@10": 0.0}, 10) == 0.0
    assert math.isnan(f1_of_means({"precision@10": math.nan, "recall@10": math.nan}, 10))
    with pytest.raises(ValueError, match="recall@10"):
        f1_of_means({"precision@10": 0.1}, 10)


def test_compat_metrics_iterate_the_list_as_a_set_and_lose_rank_order():
    # ranked [9, 2, 5, 7, 1]; as a CPython set of small ints it iterates [1, 2, 5, 7, 9]
    topk, truth = [9, 2, 5, 7, 1], {9, 7}
    ours = standard(topk, truth, 5)
    assert ours["ndcg@5"] == pytest.approx((d(1) + d(4)) / (d(1) + d(2)))
    assert ours["mrr@5"] == 1.0
    assert fedcia_compat_ndcg(topk, truth) == pytest.approx((d(4) + d(5)) / (d(1) + d(2)))
    assert fedcia_compat_mrr(topk, truth) == 0.25


def test_compat_set_order_follows_cpython_hash_slots_not_ids():
    # 32-slot table: 33 and 1 share slot 1 (33 inserted first), 40 sits in slot 8
    topk, truth = [40, 3, 7, 33, 1], {40, 1}
    assert fedcia_compat_mrr(topk, truth) == 0.5  # set order [33, 1, 3, 7, 40]
    assert fedcia_compat_ndcg(topk, truth) == pytest.approx((d(2) + d(5)) / (d(1) + d(2)))
    assert standard(topk, truth, 5)["mrr@5"] == 1.0


def test_compat_ndcg_ideal_dcg_counts_hits_not_truth_items():
    topk, truth = list(range(10)), {0, 20, 21, 22, 23}
    assert fedcia_compat_ndcg(topk, truth) == 1.0
    ideal = sum(d(r) for r in range(1, 6))
    assert standard(topk, truth, 10)["ndcg@10"] == pytest.approx(1.0 / ideal)


def test_compat_metrics_differ_from_standard_while_precision_and_recall_agree():
    topk = [12, 3, 30, 17, 8, 25, 1, 19, 6, 14]
    for truth in ({14, 6, 40}, {3, 25, 19, 2, 50}, {12}):
        ours = standard(topk, truth, 10)
        hits = len(set(topk) & truth)
        assert ours["precision@10"] == pytest.approx(hits / 10)
        assert ours["recall@10"] == pytest.approx(hits / len(truth))
    truth = {14, 6, 40}  # hits at ranks 9, 10; set positions (id order here) 3 and 6
    ours = standard(topk, truth, 10)
    assert fedcia_compat_ndcg(topk, truth) == pytest.approx((d(3) + d(6)) / (d(1) + d(2)))
    assert fedcia_compat_ndcg(topk, truth) != pytest.approx(ours["ndcg@10"])
    assert fedcia_compat_mrr(topk, truth) == pytest.approx(1 / 3)
    assert ours["mrr@10"] == pytest.approx(1 / 9)


def test_compat_metrics_take_tensor_rows_cut_at_k_and_skip_pads():
    row = torch.tensor([5, 0, 3, -1, -1])
    assert fedcia_compat_mrr(row, np.array([5])) == pytest.approx(1 / 3)  # set [0, 3, 5]
    assert fedcia_compat_mrr(row, [5], k=1) == 1.0
    assert fedcia_compat_ndcg(row, [9]) == 0.0 and fedcia_compat_mrr(row, [9]) == 0.0
    with pytest.raises(ValueError, match="truth is empty"):
        fedcia_compat_ndcg(row, [])
