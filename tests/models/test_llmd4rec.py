"""LLMD4Rec's distillation pieces on hand-made inputs: KL, weights, candidates, prompts, epochs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from florec.client.trainers.sequential import train_epoch
from florec.models.llm import LLMConfig, build_llm, pick_target_rule
from florec.models.llmd4rec.candidates import DistillSet, crm_candidates, training_set
from florec.models.llmd4rec.crm_step import TeacherTable, distill_epoch, rerank_metrics
from florec.models.llmd4rec.llm_step import build_prompts, slot_orders
from florec.models.llmd4rec.losses import distill_kl, sample_weights, tempered
from florec.models.llmd4rec.teachers import EnsembleTeacher, LLMTeacher
from florec.models.sasrec import SASRec
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.seeds import Salt, stream


def test_kl_is_zero_when_teacher_equals_student_at_any_temperature():
    z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    for t in (1.0, 2.0, 4.0):
        kd = distill_kl(z, torch.softmax(z, -1), t)
        assert torch.allclose(kd, torch.zeros(2), atol=1e-6)


def test_kl_matches_hand_computed_value_with_t_squared_scaling():
    p = torch.tensor([[0.8, 0.2]])
    z = torch.tensor([[0.0, 0.0]])
    t = 2.0
    pt = np.array([0.8, 0.2]) ** 0.5
    pt /= pt.sum()
    want = t ** 2 * float((pt * np.log(pt / 0.5)).sum())
    assert distill_kl(z, p, t).item() == pytest.approx(want, rel=1e-5)


def test_teacher_is_detached_and_student_gets_gradient():
    z = torch.randn(3, 5, requires_grad=True)
    teacher_logits = torch.randn(3, 5, requires_grad=True)
    teacher = torch.softmax(teacher_logits, -1)
    distill_kl(z, teacher, 2.0).sum().backward()
    assert teacher_logits.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_tempered_rows_sum_to_one_and_flatten():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    hot = tempered(p, 4.0)
    assert hot.sum().item() == pytest.approx(1.0)
    assert hot.max() < p.max()
    with pytest.raises(ConfigError, match="temperature"):
        tempered(p, 0.0)


def test_weights_zero_off_candidates_and_mean_one():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    slot = torch.tensor([0, 1, -1, 2])
    w = sample_weights(p, slot, "truth")
    assert w[2] == 0
    assert w.mean().item() == pytest.approx(1.0)
    raw = torch.tensor([0.6, 0.2, 0.0, 0.4])
    assert torch.allclose(w, raw / raw.mean())
    arg = sample_weights(p, slot, "argmax")  # rows 0 and 3 pick the target
    assert arg[1] == 0 and arg[2] == 0 and arg.mean().item() == pytest.approx(1.0)
    assert arg[0] / arg[3] == pytest.approx(0.6 / 0.4)
    uni = sample_weights(p, slot, "uniform")
    assert torch.allclose(uni, torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3]))
    assert torch.equal(sample_weights(p, torch.full((4,), -1), "truth"), torch.zeros(4))


def _model(n_items: int = 30, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(n_items, max_len=8, dim=16, heads=2, layers=1, dropout=0.1)


def _windows(n_users: int = 12, n_items: int = 30, length: int = 8) -> np.ndarray:
    rng = np.random.default_rng(3)
    w = np.zeros((n_users, length), dtype=np.int64)
    for u in range(n_users):
        n = rng.integers(3, length + 1)
        w[u, length - n:] = rng.choice(np.arange(1, n_items + 1), n, replace=False)
    return w


def test_lambda_zero_epoch_equals_plain_sasrec_epoch():
    w = _windows()
    a, b = _model(), _model()
    opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)
    ds = training_set(a, w, np.arange(len(w)), k=5)
    table = TeacherTable.of(ds, np.full((len(ds), 5), 0.2), w.shape)
    torch.manual_seed(1)
    ours = distill_epoch(a, opt_a, w, stream(0, Salt.CENTRAL_SEQUENCE), 7, table, 0.0, 2.0)
    torch.manual_seed(1)
    plain = train_epoch(b, [opt_b], w, 30, stream(0, Salt.CENTRAL_SEQUENCE), 7)
    assert ours.loss_sum == pytest.approx(plain.loss_sum, rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def _share_on_fifth(lam: float) -> float:
    w = _windows()
    model = _model()
    ds = training_set(model, w, np.arange(len(w)), k=5)
    teacher = np.zeros((len(ds), 5))
    teacher[:, 4] = 1.0  # the teacher always prefers the CRM's 5th candidate
    table = TeacherTable.of(ds, teacher, w.shape)
    table.target_slot[:] = 0  # every sample counts (uniform weights)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    torch.manual_seed(0)
    for e in range(10):
        stats = distill_epoch(model, opt, w, stream(0, Salt.CENTRAL_SEQUENCE, e), 8, table,
                              lam, 1.0, "uniform")
    assert stats.kd_samples == (len(ds) if lam > 0 else 0)
    model.eval()
    with torch.no_grad():
        z = torch.gather(model.score(torch.as_tensor(ds.seqs)), 1, torch.as_tensor(ds.candidates))
    return float((z.argmax(1) == 4).float().mean())


def test_distillation_moves_the_crm_toward_the_teacher():
    assert _share_on_fifth(10.0) > _share_on_fifth(0.0) + 0.4


def test_candidates_never_list_input_items_and_find_the_target_slot():
    w = _windows()
    ds = training_set(_model(), w, np.arange(len(w)), k=6)
    for seq, cands in zip(ds.seqs, ds.candidates, strict=True):
        assert not set(cands + 1) & set(seq[seq > 0])
    hit = ds.target_slot >= 0
    assert (ds.candidates[hit, ds.target_slot[hit]] == ds.targets[hit]).all()
    assert np.allclose(ds.crm_probs.sum(1), 1.0)
    assert (np.diff(ds.crm_probs, axis=1) <= 1e-12).all()  # CRM order: best first
    cands, _ = crm_candidates(_model(), ds.seqs[:2], 4)
    assert cands.shape == (2, 4)


def test_slots_are_seeded_per_sample_and_order_keeps_crm_order():
    users, keys = np.array([1, 1, 2]), np.array([3, 4, 3])
    a = slot_orders(users, keys, 10, 0, "rank")
    assert (np.sort(a, 1) == np.arange(10)).all()
    assert (slot_orders(users[::-1], keys[::-1], 10, 0, "rank")[::-1] == a).all()
    assert (slot_orders(users, keys, 10, 0, "order") == np.arange(10)).all()
    with pytest.raises(ConfigError, match="augment"):
        slot_orders(users, keys, 10, 0, "bogus")


def _dataset(n: int = 6, k: int = 4) -> DistillSet:
    rng = np.random.default_rng(0)
    cands = np.stack([rng.permutation(20)[:k] for _ in range(n)])
    targets = cands[np.arange(n), rng.integers(0, k, n)]
    targets[0] = 19 if 19 not in cands[0] else 18  # one uncovered sample
    seqs = np.tile(np.array([[0, 0, 21, 22]]), (n, 1))
    probs = np.full((n, k), 1 / k)
    return DistillSet(np.arange(n), np.arange(n), seqs, targets, cands, probs, np.arange(n),
                      np.zeros(n, dtype=np.int64))


def test_scripted_oracle_teacher_maps_letters_back_to_crm_order():
    cfg = parse_run_config({"model": "llmd4rec", "llmd4rec-history": 3})
    ds = _dataset()
    from florec.models.cotrec.rank_eval import AnswerBook

    book = AnswerBook()
    llm = build_llm(LLMConfig(backend="scripted", cache=False, scripted_p=1.0, progress=False),
                    scripted_rule=pick_target_rule(book, 1.0))
    teacher = LLMTeacher(llm, cfg, [f"item {i}" for i in range(30)], book)
    probs = teacher.probs(ds)
    cov = ds.covered
    assert not cov[0] and np.allclose(probs[0], 0.25)
    assert (probs[cov].argmax(1) == ds.target_slot[cov]).all()
    assert teacher.fit(ds, 1)["skipped"]


def test_lora_seeds_of_other_runs_iterations_or_nodes_never_coincide(monkeypatch):
    from florec.models.llmd4rec import teachers

    seen: list[tuple[int, int]] = []

    def record(llm, prompts, targets, crm, **kw):
        seen.append((kw["init_seed"], kw["seed"]))
        return {"n": len(prompts)}

    monkeypatch.setattr(teachers, "finetune_distill", record)
    ds = _dataset()
    for seed in (0, 7919):  # seed + 7919 * iteration made (0, it 2) and (7919, it 1) collide
        cfg = parse_run_config({"model": "llmd4rec", "seed": seed})
        teacher = LLMTeacher(None, cfg, [f"item {i}" for i in range(30)])
        for it in (1, 2):
            teacher.fit(ds, it)  # central
            teacher.fit(ds, it, 0)  # partition 0: [it] and [it, 0] were one SeedSequence
            teacher.fit(ds, it, 3)  # partition 3 of a federated run
    inits, orders = zip(*seen, strict=True)
    assert len(set(orders)) == len(orders) == 12
    from florec.models.llmd4rec.llm_step import lora_init_seed

    # one adapter init per run seed, central = every node (node_teacher's lora_init_seed)
    assert set(inits) == {lora_init_seed(0), lora_init_seed(7919)}
    assert not set(inits) & set(orders)


def test_prompts_show_history_titles_and_crm_ranks():
    texts = [f"title {i}" for i in range(30)]
    ds = _dataset()
    slots = slot_orders(ds.users, ds.keys, 4, 0, "rank")
    prompt = build_prompts(ds.seqs[:1], ds.candidates[:1], slots[:1], texts, 10, "rank")[0]
    assert "title 20" in prompt and "title 21" in prompt
    first = int(ds.candidates[0, slots[0, 0]])
    assert f"A. title {first} (recommender rank {slots[0, 0] + 1})" in prompt


def test_ensemble_of_one_model_returns_its_candidate_softmax():
    w = _windows()
    model = _model()
    ds = training_set(model, w, np.arange(len(w)), k=5)
    probs = EnsembleTeacher([model]).probs(ds)
    assert np.allclose(probs, ds.crm_probs, atol=1e-5)
    two = EnsembleTeacher([model, _model(seed=5)]).probs(ds)
    assert np.allclose(two.sum(1), 1.0)


def test_rerank_metrics_by_a_perfect_teacher_put_covered_targets_first():
    ds = _dataset()
    perfect = np.zeros(ds.candidates.shape)
    cov = ds.covered
    perfect[cov, ds.target_slot[cov]] = 1.0
    out = rerank_metrics(ds, perfect, k=4)
    assert out["covered/rerank/ndcg@4"] == pytest.approx(1.0)
    assert out["rerank/hr@4"] == pytest.approx(out["crm/hr@4"])  # re-ranking keeps the hits
    assert out["coverage"] == pytest.approx(cov.mean())


def test_distillation_pass_through_copy_leaves_original():
    model = _model()
    clone = copy.deepcopy(model)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters(),
                                                 strict=True))
