"""CoT-Rec building blocks: SASRec options, projection/init, MAPB, ranker metrics, prompts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.cotrec.perception import Projection, user_perception, write_jsonl
from florec.models.cotrec.prompts import PROMPT_VERSION, ranker_prompt, user_prompt
from florec.models.cotrec.rank_eval import RankInputs, retriever_metrics, single_targets
from florec.models.cotrec.ranker import (
    build_task,
    mapb,
    mapb_task,
    ranked_metrics,
    rerank,
    shuffled_slots,
    slot_ranks,
)
from florec.models.cotrec.retriever import build_retriever, top_k, with_users
from florec.models.registry import build_sequential_model
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config


def _cfg(**kw: object):
    base = {"model": "cotrec", "dim": 16, "heads": 2, "max-seq-len": 8, "seed": 3}
    return parse_run_config(base | kw)


def test_options_off_equal_plain_sasrec_weights_and_scores():
    cfg = _cfg(**{"cotrec-user-token": False})
    ours = build_retriever(cfg, 30, 5)
    plain = build_sequential_model("sasrec", 30, seed=3, max_len=8, dim=16, heads=2,
                                   dropout=cfg.dropout)
    a, b = ours.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    ours.eval(), plain.eval()
    torch.testing.assert_close(ours.score(seq), plain.score(seq), rtol=0, atol=0)


def test_user_token_is_private_and_changes_the_user_representation():
    cfg = _cfg()
    model = build_retriever(cfg, 30, 4).eval()
    assert "user_token.weight" in model.private_state()
    assert "user_token.weight" not in model.shared_state()
    seqs = np.array([[0, 0, 0, 0, 3, 4, 5, 6]] * 2)
    x = torch.as_tensor(with_users(model, np.array([0, 1]), seqs))
    assert x.shape == (2, 9)
    z = model.represent(x)
    assert not torch.allclose(z[0], z[1])
    # a user's token is visible at every position (the causal mask keeps column 0)
    assert model.encode(x).shape == (2, 9, 16)


def test_init_rows_equal_projected_text_vectors_at_step_zero():
    rng = np.random.default_rng(0)
    item_vecs = rng.normal(size=(30, 24)).astype(np.float32)
    user_vecs = rng.normal(size=(4, 24)).astype(np.float32)
    proj = Projection.fit(item_vecs, 16)
    items, users = proj(item_vecs), proj(user_vecs)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    model = build_retriever(_cfg(), 30, 4, items, users)
    np.testing.assert_array_equal(model.embedding.items().detach().numpy(), items)
    np.testing.assert_array_equal(model.user_token.weight.detach().numpy(), users)
    assert float(model.embedding.item.weight[0].detach().abs().sum()) == 0.0  # padding row kept


def test_projection_is_pca_and_round_trips_through_arrays():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    x = (rng.normal(size=(200, 12)) * np.array([5, 3] + [0.01] * 10)) @ basis.T
    proj = Projection.fit(x, 2, scale=2.0)
    # the axes are the top-2 eigenvectors of the sample covariance (up to sign)
    _, vecs = np.linalg.eigh(np.cov(x.T))
    np.testing.assert_allclose(np.abs(proj.axes.T @ vecs[:, ::-1][:, :2]), np.eye(2), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(proj(x), axis=1), 2.0, atol=1e-5)
    again = Projection.from_arrays(proj.arrays())
    np.testing.assert_array_equal(again(x[:5]), proj(x[:5]))
    with pytest.raises(ConfigError, match="dim=13"):
        Projection.fit(x, 13)


def test_init_table_shape_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="expected \\(30, 16\\)"):
        build_retriever(_cfg(), 30, 4, np.zeros((29, 16), np.float32))


def test_mapb_slot_ignoring_ranker_is_zero():
    assert mapb(np.full((3, 10), 4)) == 0.0


def test_mapb_of_a_ranker_that_always_prefers_slot_a():
    probs = np.tile(np.array([0.5] + [0.5 / 9] * 9), (10, 1))
    ranks = slot_ranks(probs, np.arange(10))  # target in slot s -> rank s + 1
    np.testing.assert_array_equal(ranks, np.arange(1, 11))
    assert mapb(ranks[None]) == pytest.approx(2.5)  # mean |r - 5.5| over r = 1..10


def test_mapb_hand_computed_example():
    # user 1: ranks 1, 1, 3 -> mean 5/3, deviations 2/3, 2/3, 4/3 -> 8/9; user 2: 0
    assert mapb(np.array([[1, 1, 3], [2, 2, 2]])) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="rank matrix"):
        mapb(np.zeros((0, 10)))


def test_rerank_keeps_slot_order_on_ties():
    np.testing.assert_array_equal(rerank(np.array([[0.1, 0.3, 0.3, 0.3]])), [[1, 2, 3, 0]])


def test_build_task_and_mapb_task_place_the_target_in_every_slot():
    top = np.arange(20).reshape(2, 10)
    targets = np.array([3, 99])  # user 1's target is not in the top-10
    slots = shuffled_slots(2, 10, seed=0)
    task = build_task(np.array([0, 1]), top, targets, slots, lambda u, items: f"{u}:{items}")
    assert task.users.tolist() == [0]
    assert task.order[0, task.target_slot[0]] == 3
    expanded = mapb_task(task, 5, lambda u, items: f"{u}:{list(items)}")
    assert len(expanded.prompts) == 10
    assert [row[s] for row, s in zip(expanded.order, expanded.target_slot, strict=True)] == [3] * 10
    assert sorted(expanded.order[4].tolist()) == sorted(task.order[0].tolist())


def test_ranked_metrics_follow_the_loo_ndcg_formula_over_all_users():
    m = ranked_metrics(np.array([1, 3, 11]), n_users=4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / 4)
    assert m["hr@10"] == pytest.approx(2 / 4)


def test_retriever_metrics_match_full_ranking_top_k():
    cfg = _cfg(**{"cotrec-user-token": False})
    model = build_retriever(cfg, 30, 3)
    seqs = np.array([[0, 0, 0, 0, 0, 1, 2, 3]] * 3)
    mask = sp.csr_matrix((3, 30))
    top = top_k(model, seqs, mask, 10)
    scores = model.eval().score(torch.as_tensor(seqs)).detach()
    expect = torch.sort(scores, descending=True, stable=True).indices[:, :10].numpy()
    np.testing.assert_array_equal(top, expect)
    targets = np.array([top[0, 0], top[1, 2], 29 if 29 not in top[2] else -1])
    inp = RankInputs(np.arange(3), top, targets, lambda u, i: "", shuffled_slots(3, 10, 0))
    m = retriever_metrics(inp)
    n = int((targets >= 0).sum())
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / n)


def test_single_targets_requires_leave_one_out():
    truth = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]]))
    np.testing.assert_array_equal(single_targets(truth, np.arange(3)), [1, -1, 0])
    with pytest.raises(ConfigError, match="split='loo'"):
        single_targets(sp.csr_matrix(np.ones((1, 3))), np.arange(1))


def test_prompts_carry_letters_history_and_version(tmp_path):
    prompt = ranker_prompt("Sci-Fi", ["A movie"], ["x", "y", "z"])
    assert "A. x\nB. y\nC. z" in prompt and "one of A-C" in prompt and "A movie" in prompt
    with pytest.raises(ValueError, match="at least one history item"):
        user_prompt([])

    class Echo:
        def generate(self, prompts, **_):
            return [f"  kw  {len(p)}\n" for p in prompts]

    texts = user_perception(Echo(), [["a"], [], ["b", "c"]])
    assert texts[1] == "" and texts[0].startswith("kw ")
    write_jsonl(tmp_path / "u.jsonl", "user", [0, 1, 2], ["a", "", "b\nc"], texts, "echo")
    assert PROMPT_VERSION in (tmp_path / "u.jsonl").read_text()


def test_encode_cached_reuses_stored_vectors():
    from florec.models.cotrec.pipeline import encode_cached

    class Counting:
        key, dim, calls = "counting-encoder-v1", 4, 0

        def encode(self, texts, batch_size=64):
            Counting.calls += 1
            return np.arange(4 * len(texts), dtype=np.float32).reshape(len(texts), 4)

    first = encode_cached(Counting(), ["a", "b"])
    again = encode_cached(Counting(), ["a", "b"])
    np.testing.assert_array_equal(first, again)
    assert Counting.calls == 1
    encode_cached(Counting(), ["a", "c"])
    assert Counting.calls == 2


def test_no_user_perception_without_a_user_token_or_a_ranker():
    from florec.models.cotrec.pipeline import user_side

    class NoCalls:
        def generate(self, *a, **k):
            raise AssertionError("user perception called an LLM whose answers have no use")

    proj = Projection.fit(np.random.default_rng(0).normal(size=(20, 24)), 16)
    cfg = _cfg(**{"cotrec-init": "cotrec", "cotrec-user-token": False, "cotrec-ranker": "none"})
    rows, texts = user_side(cfg, NoCalls(), None, proj, np.arange(2), [["a"], ["b"]])
    assert rows is None and texts == ["", ""]
    with pytest.raises(AssertionError, match="no use"):  # a ranker needs the preferences
        user_side(_cfg(**{"cotrec-init": "cotrec", "cotrec-user-token": False,
                          "cotrec-ranker": "untuned"}), NoCalls(), None, proj, np.arange(2),
                  [["a"], ["b"]])
