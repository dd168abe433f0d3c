"""LLKD: thresholds, selection, weighted loss, teacher rule and gate, task and training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from florec.models.llkd.selection import (
    ClassThresholds,
    keep_mask,
    llkd_weights,
    normalised_entropy,
    weighted_loss,
)
from florec.models.llkd.student import accuracy_macro_f1
from florec.models.llkd.task import (
    amazon_second_level,
    build_task,
    parse_item_line,
    split_task,
)
from florec.models.llkd.teacher import (
    auroc,
    class_prompt,
    confidence_linked_rule,
    gold_lookup,
    teacher_distribution,
    teacher_gate,
)
from florec.models.llkd.train import LLKDTrainer
from florec.models.llm import LLMConfig, build_llm
from florec.recdata.errors import ConfigError
from florec.recdata.item_text import ItemText, item_text_string


def test_thresholds_follow_the_ema_by_hand():
    th = ClassThresholds(3, momentum=0.9)
    th.update(np.array([0.9, 0.5, 0.7]), np.array([0, 1, 0]))
    mu = 0.9 * (1 / 3) + 0.1 * 0.7
    m = np.array([0.9 / 3 + 0.1 * 0.8, 0.9 / 3 + 0.1 * 0.5, 1 / 3])  # class 2 unseen: unchanged
    assert th.mu == pytest.approx(mu)
    np.testing.assert_allclose(th.m, m)
    th.update(np.array([0.2]), np.array([2]))
    mu2, m[2] = 0.9 * mu + 0.1 * 0.2, 0.9 * m[2] + 0.1 * 0.2
    assert th.mu == pytest.approx(mu2)
    np.testing.assert_allclose(th.m, m)
    tau = th.thresholds()
    np.testing.assert_allclose(tau, mu2 * m / m.max())
    assert (tau <= th.mu + 1e-12).all() and tau[np.argmax(m)] == pytest.approx(th.mu)


def test_thresholds_rise_with_confidence_over_steps():
    th = ClassThresholds(2, momentum=0.5)
    start = th.thresholds().copy()
    for _ in range(5):
        th.update(np.array([0.95, 0.9, 0.85]), np.array([0, 1, 1]))
    assert (th.thresholds() > start).all()


def test_summed_node_statistics_equal_the_pooled_update():
    rng = np.random.default_rng(0)
    values, pseudo = rng.random(40), rng.integers(0, 4, 40)
    pooled, merged = ClassThresholds(4, 0.99), ClassThresholds(4, 0.99)
    pooled.update(values, pseudo)
    stats = sum(ClassThresholds.batch_stats(values[s], pseudo[s], 4)
                for s in (slice(0, 13), slice(13, 29), slice(29, 40)))
    assert len(stats) == 2 * 4 + 2
    merged.update_stats(stats)
    np.testing.assert_allclose(merged.state(), pooled.state())


def test_selection_keeps_exactly_confident_teacher_and_uncertain_student():
    tau_t, tau_s = np.array([0.6, 0.8]), np.array([0.5, 0.3])
    conf = np.array([0.7, 0.7, 0.5, 0.9, 0.79, 0.81])
    unc = np.array([0.6, 0.4, 0.9, 0.35, 0.9, 0.2])
    pseudo = np.array([0, 0, 0, 1, 1, 1])
    keep = keep_mask(conf, unc, pseudo, tau_t, tau_s)
    assert keep.tolist() == [True, False, False, True, False, False]
    # monotone: raising a kept sample's c_T or u_S never drops it
    assert keep_mask(conf + 0.05, unc + 0.05, pseudo, tau_t, tau_s)[keep].all()


def test_weights_are_mean_one_on_kept_samples_and_zero_elsewhere():
    conf, unc = np.array([0.9, 0.6, 0.8, 0.5]), np.array([0.5, 0.5, 0.25, 1.0])
    keep = np.array([True, True, True, False])
    w = llkd_weights(conf, unc, keep)
    raw = np.array([0.45, 0.30, 0.20])
    np.testing.assert_allclose(w, [*(raw / raw.mean()), 0.0])
    assert w[keep].mean() == pytest.approx(1.0)
    assert llkd_weights(conf, unc, np.zeros(4, bool)).tolist() == [0, 0, 0, 0]


def test_weighted_loss_on_hand_made_numbers():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pseudo = torch.tensor([0, 0, 1])
    keep, w = torch.tensor([True, True, False]), torch.tensor([1.5, 0.5, 0.0])
    ce = [np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(1.0))]
    expected = (1.5 * ce[0] + 0.5 * ce[1]) / 3
    assert weighted_loss(logits, pseudo, keep, w).item() == pytest.approx(expected, rel=1e-6)
    ones = torch.ones(3)
    assert weighted_loss(logits, pseudo, ones.bool(), ones).item() == pytest.approx(
        F.cross_entropy(logits, pseudo).item(), rel=1e-6)


def test_normalised_entropy_is_zero_for_one_hot_and_one_for_uniform():
    u = normalised_entropy(np.array([[1.0, 0, 0, 0], [0.25] * 4]))
    np.testing.assert_allclose(u, [0.0, 1.0], atol=1e-9)


def test_llkd_with_zero_thresholds_and_unit_weights_equals_pseudo_label_training(monkeypatch):
    import florec.models.llkd.train as train_mod

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(64, 8)).astype(np.float32)
    teacher = rng.dirichlet(np.ones(3), 64)
    plain = LLKDTrainer(emb, teacher, "all", seed=3)
    reduced = LLKDTrainer(emb, teacher, "llkd", seed=3)
    zeros = np.zeros(3)
    monkeypatch.setattr(reduced.tau_teacher, "thresholds", lambda: zeros)
    monkeypatch.setattr(reduced.tau_student, "thresholds", lambda: zeros)
    monkeypatch.setattr(train_mod, "llkd_weights", lambda c, u, keep: keep * 1.0)
    for _ in range(2):
        assert reduced.epoch(16) == pytest.approx(plain.epoch(16), rel=1e-6)
    assert reduced.log.losses == pytest.approx(plain.log.losses, rel=1e-6)
    assert reduced.log.ever.all()


def test_budget_caps_distinct_samples_of_baselines():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    teacher = rng.dirichlet(np.ones(4) * 0.5, 200)
    for rule in ("random", "teacher", "student"):
        log = LLKDTrainer(emb, teacher, rule, momentum=0.5, budget=50, seed=0).fit(3, 20)
        assert log.ever.sum() <= 50
    assert LLKDTrainer(emb, teacher, "random", budget=50).fit(1, 20).ever.sum() == 50


def test_scripted_teacher_accuracy_and_confidence_are_linked():
    texts = [f"Widget {i}" for i in range(600)]
    gold = np.arange(600) % 4
    classes = ("a", "b", "c", "d")
    book = gold_lookup(texts, gold, classes)
    llm = build_llm(LLMConfig(backend="scripted", cache=False, progress=False),
                    scripted_rule=confidence_linked_rule(book.__getitem__, 0.6))
    probs = teacher_distribution(llm, texts, classes)
    gate = teacher_gate(probs, gold)
    assert gate["accuracy"] == pytest.approx(0.6, abs=0.06)
    assert gate["majority"] == pytest.approx(0.25)
    assert gate["auroc"] > 0.7 and gate["passed"]
    np.testing.assert_allclose(probs.sum(1), 1.0)


def test_auroc_matches_hand_counts():
    assert auroc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    # pairs (positive, negative): (.1,.5) 0, (.1,.9) 0, (.5,.5) tie 1/2, (.5,.9) 0 -> 0.5 / 4
    assert auroc(np.array([0.1, 0.5, 0.5, 0.9]), np.array([1, 1, 0, 0])) == pytest.approx(0.125)


def test_macro_f1_on_a_hand_made_confusion():
    gold, pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    out = accuracy_macro_f1(pred, gold, 3)
    f1 = [2 / (2 + 1 + 1), 4 / (4 + 1 + 0), 0.0]
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["macro-f1"] == pytest.approx(np.mean(f1))


def test_amazon_second_level_prefers_the_longest_known_name():
    path = "Industrial & Scientific Industrial Electrical Wiring & Connecting Wire"
    assert amazon_second_level(path) == "Industrial Electrical"
    assert amazon_second_level("Industrial & Scientific Tapes, Adhesives & Sealants Tape") == \
        "Tapes, Adhesives & Sealants"
    assert amazon_second_level("Something else") == ""


def test_task_drops_the_category_from_inputs_and_keeps_single_label_gold():
    texts = [ItemText("A (1990)", ["Drama"]), ItemText("B (1991)", ["Comedy", "Drama"]),
             ItemText("C (1992)", ["Comedy"]), ItemText("D (1993)", ["Horror"])]
    task = build_task("ml-100k", texts, 2)
    assert task.classes == ("Drama", "Comedy")
    assert task.gold.tolist() == [0, -1, 1, -1]
    assert task.inputs == ["A (1990)", "B (1991)", "C (1992)", "D (1993)"]
    assert "Drama" not in class_prompt(task.inputs[0], ()).split("Options")[0]
    pool, test = split_task(task, 0.5, 0)
    assert sorted([*pool, *test]) == [0, 2] and len(test) == 1
    with pytest.raises(ConfigError, match="llkd-classes"):
        build_task("ml-100k", texts, 11)


def test_parse_item_line_inverts_the_prompt_line():
    movie = ItemText("Toy Story (1995)", ["Animation", "Children's", "Comedy"])
    product = ItemText("Glue | 8 oz", ["Industrial & Scientific Tapes, Adhesives & Sealants"],
                       "Gorilla", "Categories")
    for t in (movie, product):
        assert parse_item_line(item_text_string(t)) == t
