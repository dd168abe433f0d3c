"""Tests for models.metrics: evaluation.md sections 2-5 and the acceptance ideas of section 9."""

from __future__ import annotations

import ast
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models import metric_accumulator, metrics, ranking
from florec.models.metrics import (
    METRIC_NAMES,
    add_sums,
    evaluate_users,
    finalize,
    ranking_metric_sums,
    topk_items,
)

INF = math.inf


# --------------------------------------------------------------------------------------------------
# Helpers: brute-force references written straight from the spec, one user at a time
# --------------------------------------------------------------------------------------------------


def reference_list(row: np.ndarray, k: int) -> list[int]:
    """Stable sort by score descending then id ascending; masked (-inf) items never listed."""
    order = sorted((i for i in range(row.size) if row[i] != -INF), key=lambda i: (-row[i], i))
    return order[:k]


def reference_user_metrics(ranked: list[int], truth: set[int], k: int) -> dict[str, float]:
    rel = [1 if (r < len(ranked) and ranked[r] in truth) else 0 for r in range(k)]
    h = sum(rel)
    p = h / k
    rec = h / len(truth)
    f1 = 0.0 if h == 0 else 2 * p * rec / (p + rec)
    dcg = sum(rel[r] / math.log2(r + 2) for r in range(k))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
    mrr = next((1 / (r + 1) for r in range(k) if rel[r]), 0.0)
    return {
        "precision": p,
        "recall": rec,
        "hr": float(h >= 1),
        "f1": f1,
        "ndcg": dcg / idcg,
        "mrr": mrr,
    }


def reference_means(scores: np.ndarray, truth: list[set[int]], ks) -> dict[str, float]:
    out: dict[str, float] = {}
    users = [u for u in range(scores.shape[0]) if truth[u]]
    for k in ks:
        per = [reference_user_metrics(reference_list(scores[u], k), truth[u], k) for u in users]
        for name in METRIC_NAMES:
            out[f"{name}@{k}"] = sum(p[name] for p in per) / len(per)
    out["num-users"] = float(len(users))
    return out


def random_problem(seed: int, n_users: int = 53, n_items: int = 41, levels: int = 4):
    """Integer-valued scores (many ties), a train mask and held-out truth (some users empty)."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float64)
    mask = (rng.random((n_users, n_items)) < 0.3).astype(np.int8)
    truth = ((rng.random((n_users, n_items)) < 0.1) & (mask == 0)).astype(np.int8)
    truth[rng.random(n_users) < 0.15] = 0  # some users have nothing held out
    return scores, sp.csr_matrix(mask), sp.csr_matrix(truth)


def masked(scores: np.ndarray, mask: sp.csr_matrix) -> np.ndarray:
    out = scores.copy()
    out[mask.toarray() != 0] = -INF
    return out


def truth_sets(truth: sp.csr_matrix) -> list[set[int]]:
    return [
        set(truth.indices[truth.indptr[u] : truth.indptr[u + 1]].tolist())
        for u in range(truth.shape[0])
    ]


# --------------------------------------------------------------------------------------------------
# Worked example (evaluation.md section 4)
# --------------------------------------------------------------------------------------------------


def worked_example():
    # Item i sits at rank i + 1 for both users.
    scores = torch.arange(8, 0, -1, dtype=torch.float32).repeat(2, 1)
    truth = [np.array([0, 2]), np.array([1, 4, 7])]  # A: ranks 1, 3; B: ranks 2, 5 (+ one below K)
    return scores, truth


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (0, {"precision": 0.4, "recall": 1.0, "f1": 0.5714, "ndcg": 0.9197, "mrr": 1.0, "hr": 1.0}),
        (1, {"precision": 0.4, "recall": 0.6667, "f1": 0.5, "ndcg": 0.4776, "mrr": 0.5, "hr": 1.0}),
    ],
)
def test_worked_example_reproduces_table_per_user(user, expected):
    scores, truth = worked_example()
    sums = ranking_metric_sums(scores[user : user + 1], [truth[user]], ks=[5])
    assert sums["num-users"] == 1
    for name, value in expected.items():
        assert sums[f"{name}@5"] == pytest.approx(value, abs=5e-5)


def test_worked_example_mean_f1_differs_from_f1_of_means():
    scores, truth = worked_example()
    means = finalize(ranking_metric_sums(scores, truth, ks=[5]))
    assert means["num-users"] == 2
    assert means["f1@5"] == pytest.approx(0.5357, abs=5e-5)
    p, r = means["precision@5"], means["recall@5"]
    assert 2 * p * r / (p + r) == pytest.approx(0.5405, abs=5e-5)  # f1_of_means, not our F1
    assert means["ndcg@5"] == pytest.approx((0.9197 + 0.4776) / 2, abs=1e-4)
    assert means["mrr@5"] == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------------
# Ranking order, ties, masking
# --------------------------------------------------------------------------------------------------


def test_all_ties_row_lists_items_in_ascending_id_order():
    scores = torch.zeros(3, 50)
    assert topk_items(scores, 10).tolist() == [list(range(10))] * 3


def test_ties_inside_and_at_boundary_follow_id_order():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0, 2.0]])
    # 3.0: items 1, 3; then 2.0: items 2, 4, 5, 7 (boundary tie at K=4 cut in id order).
    assert topk_items(scores, 4).tolist() == [[1, 3, 2, 4]]
    assert topk_items(scores, 7).tolist() == [[1, 3, 2, 4, 5, 7, 0]]


def test_masked_items_never_listed_and_padded_with_minus_one():
    scores = torch.tensor(
        [
            [-INF, 5.0, -INF, 5.0, 1.0],
            [-INF, -INF, -INF, -INF, -INF],
            [2.0, 2.0, 2.0, 2.0, 2.0],
        ]
    )
    assert topk_items(scores, 4).tolist() == [[1, 3, 4, -1], [-1, -1, -1, -1], [0, 1, 2, 3]]
    # k larger than the catalogue
    assert topk_items(scores, 7).tolist() == [
        [1, 3, 4, -1, -1, -1, -1],
        [-1] * 7,
        [0, 1, 2, 3, 4, -1, -1],
    ]


def test_positive_infinity_is_a_valid_top_score():
    scores = torch.tensor([[0.0, INF, 1.0, INF, -INF]])
    assert topk_items(scores, 5).tolist() == [[1, 3, 2, 0, -1]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 10, 40, 41, 60])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_items_equals_stable_full_sort(seed, k, dtype):
    g = torch.Generator().manual_seed(seed)
    n_items = 41
    scores = torch.randint(0, 1 + seed, (37, n_items), generator=g).to(dtype)
    scores[torch.rand(scores.shape, generator=g) < 0.4] = -INF
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    ref = torch.where(vals > -INF, idx, torch.full_like(idx, -1))
    if k > n_items:
        ref = torch.cat([ref, torch.full((ref.shape[0], k - n_items), -1)], dim=1)
    got = topk_items(scores, k)
    assert got.dtype == torch.int64
    assert torch.equal(got, ref[:, :k])


def test_topk_items_accepts_integer_and_half_scores():
    ints = torch.tensor([[1, 3, 3, 0, 3]])
    assert topk_items(ints, 3).tolist() == [[1, 2, 4]]
    assert topk_items(ints.half(), 3).tolist() == [[1, 2, 4]]


def test_nan_score_raises_everywhere():
    scores = torch.tensor([[0.1, math.nan, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        topk_items(scores, 2)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metric_sums(scores, [np.array([0])], ks=[2])
    truth = sp.csr_matrix(np.array([[1, 0, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_users(lambda u: scores[u], np.array([0]), None, truth, ks=[2])


def test_nan_on_a_masked_item_still_raises():
    scores = torch.tensor([[0.1, math.nan, 0.3]])
    mask = sp.csr_matrix(np.array([[0, 1, 0]]))
    truth = sp.csr_matrix(np.array([[1, 0, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_users(lambda u: scores[u], np.array([0]), mask, truth, ks=[2])


def test_invalid_k_raises():
    with pytest.raises(ValueError):
        topk_items(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError):
        ranking_metric_sums(torch.zeros(1, 3), [np.array([0])], ks=[])


# --------------------------------------------------------------------------------------------------
# Metric definitions
# --------------------------------------------------------------------------------------------------


def test_users_without_truth_are_skipped():
    scores = torch.arange(6, 0, -1, dtype=torch.float64).repeat(3, 1)
    truth = [np.array([0]), np.array([], dtype=np.int64), np.array([5])]
    sums = ranking_metric_sums(scores, truth, ks=[2])
    assert sums["num-users"] == 2
    means = finalize(sums)
    assert means["hr@2"] == pytest.approx(0.5)
    assert means["recall@2"] == pytest.approx(0.5)
    assert means["precision@2"] == pytest.approx(0.25)


def test_idcg_counts_min_of_truth_size_and_k():
    scores = torch.arange(10, 0, -1, dtype=torch.float64)[None, :]
    # |T| = 1 < K: a hit at rank 1 is a perfect list.
    assert ranking_metric_sums(scores, [np.array([0])], ks=[5])["ndcg@5"] == pytest.approx(1.0)
    # |T| = 2 < K, hits at ranks 1 and 2: perfect too.
    assert ranking_metric_sums(scores, [np.array([0, 1])], ks=[5])["ndcg@5"] == pytest.approx(1.0)
    # |T| = 8 > K = 3: IDCG sums K terms; all 3 listed items are hits, so NDCG = 1.
    sums = ranking_metric_sums(scores, [np.arange(8)], ks=[3])
    assert sums["ndcg@3"] == pytest.approx(1.0)
    assert sums["recall@3"] == pytest.approx(3 / 8)
    # |T| = 2, single hit at rank 2: (1/log2 3) / (1 + 1/log2 3).
    sums = ranking_metric_sums(scores, [np.array([1, 9])], ks=[5])
    assert sums["ndcg@5"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_precision_divides_by_k_even_with_few_candidates():
    scores = torch.tensor([[3.0, 2.0, -INF, -INF, -INF, -INF]])
    sums = ranking_metric_sums(scores, [np.array([0, 1])], ks=[5])
    assert sums["precision@5"] == pytest.approx(2 / 5)
    assert sums["recall@5"] == pytest.approx(1.0)
    assert sums["f1@5"] == pytest.approx(2 * 0.4 * 1.0 / 1.4)


def test_mrr_is_cut_at_k_and_f1_zero_without_hit():
    scores = torch.arange(10, 0, -1, dtype=torch.float64)[None, :]
    sums = ranking_metric_sums(scores, [np.array([6])], ks=[5, 10])
    assert sums["mrr@5"] == 0.0
    assert sums["f1@5"] == 0.0
    assert sums["ndcg@5"] == 0.0
    assert sums["mrr@10"] == pytest.approx(1 / 7)


def test_masked_truth_item_cannot_be_hit():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    sums = ranking_metric_sums(torch.tensor([[-INF, 4.0, 3.0, 2.0]]), [np.array([0])], ks=[2])
    assert sums["hr@2"] == 0.0
    mask = sp.csr_matrix(np.array([[1, 0, 0, 0]]))
    truth = sp.csr_matrix(np.array([[1, 0, 0, 0]]))
    out = evaluate_users(lambda u: scores[u], np.array([0]), mask, truth, ks=[2])
    assert out["hr@2"] == 0.0 and out["num-users"] == 1


def test_truth_list_and_csr_give_same_sums():
    scores_np, mask, truth = random_problem(3)
    scores = torch.from_numpy(masked(scores_np, mask))
    as_list = [np.array(sorted(t)) for t in truth_sets(truth)]
    assert ranking_metric_sums(scores, truth, ks=[5, 10]) == ranking_metric_sums(
        scores, as_list, ks=[5, 10]
    )


def test_duplicate_truth_ids_count_once():
    scores = torch.arange(5, 0, -1, dtype=torch.float64)[None, :]
    sums = ranking_metric_sums(scores, [np.array([0, 0, 3])], ks=[2])
    assert sums["recall@2"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# Invariance and brute-force agreement
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_results_identical_across_chunk_sizes_and_match_bruteforce(seed):
    scores_np, mask, truth = random_problem(seed, levels=2 + seed)
    scores = torch.from_numpy(scores_np)
    users = np.arange(scores_np.shape[0])
    ks = (1, 5, 10)
    runs = [
        evaluate_users(lambda u: scores[u], users, mask, truth, ks=ks, chunk_size=c)
        for c in (1, 7, 1024)
    ]
    assert runs[0] == runs[1] == runs[2]  # bit-identical sums
    # Same as ranking the already-masked batch in one go.
    assert runs[0] == ranking_metric_sums(torch.from_numpy(masked(scores_np, mask)), truth, ks)

    ref = reference_means(masked(scores_np, mask), truth_sets(truth), ks)
    got = finalize(runs[0])
    assert got["num-users"] == ref["num-users"] > 0
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_user_order_does_not_change_results():
    scores_np, mask, truth = random_problem(11)
    scores = torch.from_numpy(scores_np)
    users = np.arange(scores_np.shape[0])
    perm = np.random.default_rng(0).permutation(users)
    a = evaluate_users(lambda u: scores[u], users, mask, truth, ks=(3, 10), chunk_size=5)
    b = evaluate_users(lambda u: scores[u], perm, mask, truth, ks=(3, 10), chunk_size=9)
    assert a == b


def test_federated_pooling_equals_central_computation():
    scores_np, mask, truth = random_problem(7, n_users=80)
    scores = torch.from_numpy(scores_np)
    users = np.arange(scores_np.shape[0])
    central = finalize(evaluate_users(lambda u: scores[u], users, mask, truth, ks=(5, 10)))

    rng = np.random.default_rng(1)
    client_of = rng.integers(0, 6, size=users.size)
    client_of[:8] = 5  # make client 5 small; client 6 below has no users at all
    parts = [
        evaluate_users(
            lambda u: scores[u], users[client_of == c], mask, truth, ks=(5, 10), chunk_size=4
        )
        for c in range(7)
    ]
    assert parts[-1]["num-users"] == 0
    pooled = finalize(functools.reduce(add_sums, parts, {}))
    assert pooled.keys() == central.keys()
    for key in central:
        assert pooled[key] == pytest.approx(central[key], rel=1e-12), key
    # Averaging client means would be a different (wrong) number in general.
    client_means = [finalize(p)["recall@5"] for p in parts if p["num-users"] > 0]
    assert np.mean(client_means) != pytest.approx(central["recall@5"], rel=1e-9)


def test_score_fn_output_is_not_modified_by_masking():
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    before = scores.clone()
    mask = sp.csr_matrix(np.eye(3, 4, dtype=np.int8))
    truth = sp.csr_matrix(np.ones((3, 4), dtype=np.int8))
    evaluate_users(lambda u: scores[0 : u.numel()], np.arange(3), mask, truth, ks=[2])
    assert torch.equal(scores, before)


def test_evaluate_users_passes_user_ids_and_indexes_rows_by_user_id():
    # Each user's own scores put a different item first; truth and mask are looked up by user id.
    n_users, n_items = 6, 5
    scores = torch.zeros(n_users, n_items)
    scores[torch.arange(n_users), torch.arange(n_users) % n_items] = 1.0
    truth = sp.csr_matrix(
        (np.ones(n_users), (np.arange(n_users), np.arange(n_users) % n_items)),
        shape=(n_users, n_items),
    )
    seen = []

    def score_fn(u):
        seen.append(u.clone())
        return scores[u]

    out = evaluate_users(score_fn, np.array([4, 1, 3]), None, truth, ks=[1], chunk_size=2)
    assert out["hr@1"] == 3 and out["num-users"] == 3
    assert [t.tolist() for t in seen] == [[4, 1], [3]]
    assert all(t.dtype == torch.int64 for t in seen)


def test_evaluate_users_rejects_bad_inputs():
    truth = sp.csr_matrix(np.eye(3))
    ok = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_users(lambda u: ok[u], np.array([0, 0]), None, truth)
    with pytest.raises(ValueError):
        evaluate_users(lambda u: ok[u], np.array([3]), None, truth)
    with pytest.raises(ValueError, match="expected"):
        evaluate_users(lambda u: torch.zeros(u.numel(), 4), np.array([0]), None, truth)
    with pytest.raises(ValueError):
        evaluate_users(lambda u: ok[u], np.array([0]), sp.csr_matrix(np.eye(3, 4)), truth)


# --------------------------------------------------------------------------------------------------
# Boundary ties, pooling helpers
# --------------------------------------------------------------------------------------------------


def test_boundary_ties_counted():
    scores = torch.tensor(
        [
            [5.0, 4.0, 3.0, 3.0, 1.0],  # K=3: 3rd (3.0) == 4th (3.0) -> tie; K=2: no tie
            [5.0, 4.0, 3.0, 2.0, 1.0],  # no ties
            [1.0, 1.0, 1.0, 1.0, 1.0],  # ties at every K < 5
            [7.0, 7.0, 7.0, -INF, -INF],  # K=3: 4th is masked -> no tie
            [-INF, -INF, 2.0, -INF, -INF],  # fewer than K candidates -> no tie
            [1.0, 1.0, 1.0, 1.0, 1.0],  # ties, but no truth: not evaluated, not counted
        ]
    )
    truth = [np.array([0])] * 5 + [np.array([], dtype=np.int64)]
    sums = ranking_metric_sums(scores, truth, ks=[2, 3, 5])
    assert sums["boundary-ties@2"] == 2  # rows 2 and 3
    assert sums["boundary-ties@3"] == 2  # rows 0 and 2
    assert sums["boundary-ties@5"] == 0  # no (K+1)-th item
    means = finalize(sums)
    assert means["boundary-tie-rate@3"] == pytest.approx(2 / 5)
    assert "boundary-ties@3" not in means


def test_add_sums_identity_and_key_mismatch():
    a = {"recall@10": 1.5, "num-users": 3.0}
    assert add_sums({}, a) == a and add_sums(a, {}) == a
    assert add_sums(a, a) == {"recall@10": 3.0, "num-users": 6.0}
    with pytest.raises(ValueError):
        add_sums(a, {"recall@20": 1.0, "num-users": 1.0})


def test_finalize_keys_and_zero_users():
    sums = ranking_metric_sums(torch.zeros(2, 4), [np.array([], dtype=np.int64)] * 2, ks=[2, 3])
    assert sums["num-users"] == 0
    assert all(v == 0 for v in sums.values())
    means = finalize(sums)
    expected = {f"{m}@{k}" for m in METRIC_NAMES for k in (2, 3)}
    expected |= {"num-users", "boundary-tie-rate@2", "boundary-tie-rate@3"}
    assert set(means) == expected
    assert means["num-users"] == 0
    assert all(math.isnan(v) for key, v in means.items() if key != "num-users")


def test_sums_keys_cover_every_metric_and_k():
    sums = ranking_metric_sums(torch.zeros(1, 30), [np.array([0])], ks=(20, 10))
    expected = {f"{m}@{k}" for m in METRIC_NAMES for k in (10, 20)}
    expected |= {"num-users", "boundary-ties@10", "boundary-ties@20"}
    assert set(sums) == expected


def test_module_does_not_import_flwr():
    names = set()
    for module in (metrics, ranking, metric_accumulator):
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
    assert "flwr" not in names


# --------------------------------------------------------------------------------------------------
# Popularity metrics: ARP@K and item coverage@K (evaluation.md section 4, Fair Sampling)
# --------------------------------------------------------------------------------------------------


def test_arp_and_coverage_on_a_hand_made_case():
    pop = np.array([10.0, 1.0, 4.0, 0.0, 7.0])
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0],    # top-2 after masking item 0: 1, 2
                           [1.0, 2.0, 3.0, 4.0, 5.0]])   # top-2: 4, 3
    mask = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    truth = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))
    sums = evaluate_users(lambda u: scores[u], np.arange(2), mask, truth, ks=[2],
                          item_pop=pop, coverage=True)
    assert sums["arp@2"] == pytest.approx((1 + 4) / 2 + (7 + 0) / 2)
    means = finalize(sums)
    assert means["arp@2"] == pytest.approx(3.0)
    assert means["coverage@2"] == pytest.approx(4 / 5)  # items 1, 2, 3, 4
    assert "arp@2" not in finalize(evaluate_users(lambda u: scores[u], np.arange(2), mask,
                                                  truth, ks=[2]))


def test_arp_pads_count_zero_and_divide_by_k():
    scores = torch.tensor([[1.0, -INF, -INF]])
    sums = ranking_metric_sums(scores, [np.array([0])], ks=[2])
    assert "arp@2" not in sums
    out = evaluate_users(lambda u: scores[u], np.arange(1), None,
                         sp.csr_matrix(np.array([[1, 0, 0]])), ks=[2],
                         item_pop=np.array([6.0, 3.0, 3.0]))
    # -inf items are never listed: the list is [item 0, pad], so ARP = (6 + 0) / 2
    assert out["arp@2"] == pytest.approx(3.0)


def test_arp_sums_pool_over_clients_like_accuracy():
    rng = np.random.default_rng(0)
    scores = torch.as_tensor(rng.random((12, 9)))
    truth = sp.csr_matrix((rng.random((12, 9)) > 0.7).astype(float))
    pop = rng.integers(0, 50, 9).astype(float)
    whole = finalize(evaluate_users(lambda u: scores[u], np.arange(12), None, truth, ks=[3],
                                    item_pop=pop))
    parts = [evaluate_users(lambda u: scores[u], users, None, truth, ks=[3], item_pop=pop)
             for users in (np.arange(5), np.arange(5, 12))]
    pooled = finalize(functools.reduce(add_sums, parts, {}))
    assert pooled["arp@3"] == pytest.approx(whole["arp@3"], rel=1e-12)


def test_item_pop_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="item_pop"):
        evaluate_users(lambda u: torch.zeros(len(u), 3), np.arange(1), None,
                       sp.csr_matrix(np.eye(1, 3)), item_pop=np.ones(4))


def test_precision_and_hr_formulas_agree_with_the_pooled_integer_counts():
    from florec.models.metric_formulas import hr_at_k, precision_at_k
    from florec.models.metrics import evaluate_users, finalize

    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(30, 25, generator=gen)
    truth = sp.random(30, 25, density=0.15, format="csr", random_state=4)
    truth.data[:] = 1.0
    mask = sp.csr_matrix((30, 25))
    got = finalize(evaluate_users(lambda u: scores[u], np.arange(30), mask, truth, [5]))
    ranked = torch.argsort(-scores, dim=1, stable=True)[:, :5]
    dense = torch.as_tensor(truth.toarray() > 0)
    hits = torch.gather(dense, 1, ranked)
    evaluated = torch.as_tensor(np.diff(truth.indptr) > 0)
    assert got["precision@5"] == pytest.approx(float(precision_at_k(hits, 5)[evaluated].mean()))
    assert got["hr@5"] == pytest.approx(float(hr_at_k(hits, 5)[evaluated].mean()))
