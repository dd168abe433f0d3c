"""bench/fair_ablation.py and its report: authors' filter, debiased split, authors' protocol."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from florec.models.mf import MF
from florec.recdata.errors import ConfigError
from florec.recdata.interactions import Interactions
from florec.recdata.splits import Split

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "fair_ablation"
CONFIG = Path(__file__).resolve().parents[2] / "bench" / "fair_ablation.toml"


def test_k_core_removes_the_cascade_of_users_and_items_below_k(bench_script) -> None:
    abl = bench_script("fair_ablation")
    # users 0-2 x items 0-1 form a 2-core; user 3 has items 1, 2; item 2 has only user 3:
    # dropping item 2 leaves user 3 with one item, so user 3 goes too.
    user = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    item = np.array([0, 1, 0, 1, 0, 1, 1, 2])
    keep = abl.k_core(user, item, 2)
    assert keep.tolist() == [True] * 6 + [False, False]


def _skewed(n_users: int = 300, n_items: int = 120, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=25, replace=False, p=p)
        users += [u] * len(chosen)
        items += chosen.tolist()
    return Interactions.from_raw(np.array(users), np.array(items), None)


def test_debiased_split_makes_test_near_uniform_over_items(bench_script) -> None:
    abl = bench_script("fair_ablation")
    inter = _skewed()
    labels = abl.debiased_split(inter, seed=0)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert (labels == 2).mean() == pytest.approx(0.2, abs=0.02)
    rest = labels != 2
    assert (labels[rest] == 1).mean() == pytest.approx(0.1, abs=0.03)
    pop = np.bincount(inter.item, minlength=inter.n_items)
    test_counts = np.bincount(inter.item[labels == 2], minlength=inter.n_items)
    head = np.argsort(-pop)[:10]
    # a random 20% would give the head items 20% of their counts; the debiased test caps them
    assert test_counts[head].sum() < 0.5 * 0.2 * pop[head].sum()
    # the test popularity skew (max / median count) is far below the data's
    assert test_counts.max() / np.median(test_counts) < 0.25 * pop.max() / np.median(pop)


def test_debiased_split_with_min_train_keeps_rows_of_every_item_out_of_test(bench_script) -> None:
    abl = bench_script("fair_ablation")
    inter = _skewed(n_items=400)
    pop = np.bincount(inter.item, minlength=inter.n_items)
    base = abl.debiased_split(inter, seed=0)
    kept0 = np.bincount(inter.item[base != 2], minlength=inter.n_items)
    assert ((kept0 == 0) & (pop > 0)).sum() > 20  # without the option the tail goes to test
    for k in (1, 3):
        labels = abl.debiased_split(inter, seed=0, min_train=k)
        kept = np.bincount(inter.item[labels != 2], minlength=inter.n_items)
        assert (kept >= np.minimum(k, pop)).all()
        # valid cannot take them: every item is trainable
        train = np.bincount(inter.item[labels == 0], minlength=inter.n_items)
        assert (train >= np.minimum(k, pop)).all()
        # only the deficit comes back from test; no other row changes side
        returned = np.maximum(np.minimum(k, pop) - kept0, 0).sum()
        assert (labels == 2).sum() == (base == 2).sum() - returned
        assert ((labels == 2) & (base != 2)).sum() == 0


def test_min_train_on_a_random_split_is_a_config_error(bench_script, monkeypatch) -> None:
    abl = bench_script("fair_ablation")
    monkeypatch.setattr(abl, "authors_ml1m", lambda data_dir: _skewed())
    with pytest.raises(ConfigError, match="min-train = 1 applies only to split 'debiased'"):
        abl.build_split("authors", "ratio-fs", 0, None, min_train=1)


def test_cold_rows_counts_items_without_train_rows_and_their_test_rows(bench_script) -> None:
    got = bench_script("fair_ablation").cold_rows(_tiny_split())
    # items 0-3 occur; item 3 (one test row of two) has no train row; item 4 never occurs
    assert got == {"items": 4, "cold-items": 1, "test-rows": 2, "cold-test-rows": 1}


def _tiny_split() -> Split:
    # user 0: item 0 train, item 1 valid, items 2 and 3 test; user 1: items 1 and 2 train (so
    # item 3 never occurs in train and the authors drop it from the truth); item 4 unseen
    arr = lambda *a: np.array(a)  # noqa: E731
    return Split(parts={"train": (arr(0, 1, 1), arr(0, 1, 2), arr(0.0, 0.0, 0.0)),
                        "valid": (arr(0), arr(1), arr(0.0)),
                        "test": (arr(0, 0), arr(2, 3), arr(0.0, 0.0))}, n_users=2, n_items=5)


def test_authors_protocol_counts_unmasked_valid_items_as_misses(bench_script) -> None:
    abl = bench_script("fair_ablation")
    split = _tiny_split()
    model = MF(2, 5, dim=1)
    with torch.no_grad():
        model.user_emb.fill_(1.0)
        model.item_emb.copy_(torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]]))
    got = abl.authors_test(model, split, [1, 2], chunk=8)
    # train item 0 masked; valid item 1 takes rank 1, test item 2 rank 2; item 3 is not truth
    assert got["authors/num-users"] == 1.0
    assert got["authors/recall@1"] == 0.0
    assert got["authors/recall@2"] == 1.0
    assert got["authors/ndcg@2"] == pytest.approx(1 / np.log2(3), rel=1e-6)
    florec = abl.evaluate_model(model, split, "test", [1, 2])
    assert florec["recall@1"] == 0.5  # valid item masked: item 2 first, item 3 a miss


def test_a_variant_with_an_unknown_key_is_a_config_error(bench_script, tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[[variant]]\nlabel = "x"\ninit_std = 1.0\n')
    with pytest.raises(ConfigError, match="init_std"):
        bench_script("fair_ablation").variants(path)


@pytest.mark.skipif(not os.environ.get("FLOREC_TEST_DATA"), reason="needs FLOREC_TEST_DATA")
def test_authors_filter_gives_the_counts_their_code_hard_codes(bench_script) -> None:
    inter = bench_script("fair_ablation").authors_ml1m(os.environ["FLOREC_TEST_DATA"])
    assert (inter.n_users, inter.n_items, len(inter)) == (5148, 2380, 553277)


def test_committed_ablation_report_is_what_the_generator_writes(bench_script) -> None:
    text = bench_script("fair_ablation_report").build(RESULTS, CONFIG)
    assert (RESULTS / "report.md").read_text() == text


def test_ablation_verdict_follows_the_cells(bench_script, tmp_path: Path) -> None:
    report = bench_script("fair_ablation_report")
    shutil.copytree(RESULTS / "ours", tmp_path / "ours")
    path = tmp_path / "ours" / "fs-pair" / "seed0" / "results.json"
    doc = json.loads(path.read_text())
    doc["runs"][0]["metrics"]["recall@20"] = 0.9876
    path.write_text(json.dumps(doc))
    text = report.build(tmp_path, CONFIG)
    assert "| ours | FS-Pair | 1 | 0.9876 |" in text
    assert "| ours | yes (recall +" in text


def test_paired_gap_pairs_the_seeds_both_losses_ran(bench_script) -> None:
    gap = bench_script("fair_ablation_report").paired_gap
    run = lambda seed, r: {"seed": seed, "metrics": {"recall@20": r}}  # noqa: E731
    bpr = [run(0, 0.10), run(1, 0.20), run(2, 0.30)]
    # seed 2 of FS-Pair is missing, seed 3 has no BPR partner: gaps +0.02 (s0), -0.01 (s1)
    fsp = [run(1, 0.19), run(0, 0.12), run(3, 0.90)]
    assert gap(bpr, fsp) == f"+0.0050 ± {np.std([0.02, -0.01], ddof=1):.4f}, ahead in 1/2"
    assert gap(bpr, [run(5, 0.5)]) == "-"
