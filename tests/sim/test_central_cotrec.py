"""Centralised CoT-Rec end to end on synthetic data (scripted and tiny LLMs, tiny encoder)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from florec.models.cotrec.rank_eval import AnswerBook
from florec.models.llm import LLMConfig, build_llm, pick_target_rule
from florec.recdata.runconfig import parse_run_config
from florec.sim.central_cotrec import run_central_cotrec
from florec.sim.central_seq import run_central_seq

BASE = {"model": "cotrec", "dataset": "synthetic", "synthetic-users": 400,
        "synthetic-items": 200, "synthetic-interactions": 20, "dim": 16, "heads": 2,
        "max-seq-len": 20, "lr": 0.005, "ks": "10", "device": "cpu", "llm-cache": False,
        "encoder": "tiny", "cotrec-mapb-users": 10, "cotrec-item-tokens": 8,
        "cotrec-user-tokens": 8}


def _cfg(**kw: object):
    return parse_run_config(BASE | kw)


def _scripted(p: float) -> tuple[object, AnswerBook]:
    book = AnswerBook()
    llm = build_llm(LLMConfig(backend="scripted", cache=False, scripted_p=p, progress=False),
                    scripted_rule=pick_target_rule(book, p))
    return llm, book


def _gain_moments(p: float, k: int = 10) -> tuple[float, float]:
    """Mean and variance of one covered user's NDCG@10 under the scripted rule.

    The target sits in a uniform slot t; with probability p its letter is picked (rank 1),
    else a uniform other slot c is picked and ranked first while the rest keep slot order, so
    the target's rank is t + 2 - [c < t].
    """
    values, probs = [1.0], [p]
    for t, c in itertools.product(range(k), range(k)):
        if c != t:
            values.append(1 / np.log2(t + 2 - (c < t) + 1))
            probs.append((1 - p) / (k * (k - 1)))
    v, w = np.array(values), np.array(probs)
    mean = float((v * w).sum())
    return mean, float((w * (v - mean) ** 2).sum())


def test_random_init_without_token_is_plain_sasrec():
    cfg = _cfg(**{"cotrec-init": "random", "cotrec-user-token": False, "cotrec-ranker": "none",
                  "synthetic-users": 150})
    ours = run_central_cotrec(cfg, epochs=2, batch_size=128)
    plain = run_central_seq(parse_run_config(cfg.to_flower() | {"model": "sasrec"}), epochs=2,
                            batch_size=128)
    assert ours["metrics"] == plain["metrics"]
    assert ours["best_round"] == plain["best_round"]
    assert ours["llm"] == {}


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_scripted_ranker_lifts_ndcg_by_the_amount_predicted_from_p_and_coverage(p):
    llm, book = _scripted(p)
    cfg = _cfg(**{"cotrec-init": "title", "cotrec-ranker": "untuned", "scripted-p": p})
    run = run_central_cotrec(cfg, epochs=2, batch_size=128, llm=llm, book=book)
    base, ranked = run["ranker"]["retriever"], run["ranker"]["untuned"]
    n = run["metrics"]["num-users"]
    covered = base["coverage"] * n
    assert covered >= 50  # enough covered users for the check to mean something
    assert base["ndcg@10"] == pytest.approx(run["metrics"]["ndcg@10"], abs=1e-9)
    assert ranked["hr@10"] == pytest.approx(base["hr@10"], abs=1e-12)  # reordering keeps hits
    mean, var = _gain_moments(p)
    predicted_lift = base["coverage"] * mean - base["ndcg@10"]
    tol = 4 * np.sqrt(var * covered) / n + 1e-9
    assert ranked["ndcg@10"] - base["ndcg@10"] == pytest.approx(predicted_lift, abs=tol)
    assert ranked["ndcg@10"] > base["ndcg@10"]


def test_title_init_calls_no_llm_before_the_ranker():
    llm, book = _scripted(0.5)
    run = run_central_cotrec(_cfg(**{"cotrec-init": "title", "cotrec-ranker": "none"}),
                             epochs=1, batch_size=128, llm=llm, book=book)
    assert run["phases"]["item-perception"].get("llm_calls", 0) == 0
    assert run["phases"]["user-perception"].get("llm_calls", 0) == 0


def test_tiny_backend_runs_perception_retriever_ranker_and_lora(tmp_path):
    cfg = _cfg(**{"synthetic-users": 60, "synthetic-items": 50, "llm-backend": "tiny",
                  "cotrec-mapb-users": 3, "llm-max-concurrency": 1})
    run = run_central_cotrec(cfg, epochs=1, batch_size=128, out_dir=tmp_path)
    phases = run["phases"]
    assert phases["item-perception"]["llm_calls"] == 50
    assert phases["user-perception"]["llm_calls"] == 60
    assert phases["item-perception"]["completion_tokens"] > 0
    ranker = run["ranker"]
    for label in ("untuned", "lora"):
        assert 0.0 <= ranker[label]["ndcg@10"] <= ranker[label]["hr@10"] <= 1.0
        assert ranker[label]["mapb"] >= 0.0
    assert ranker["lora"]["samples"] > 0 and ranker["lora"]["train"]["steps"] > 0
    lines = (tmp_path / "perception_users.jsonl").read_text().splitlines()
    assert len(lines) == 60 and json.loads(lines[0])["prompt_version"]
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert saved["ranker"]["lora"]["samples"] == ranker["lora"]["samples"]
    assert (tmp_path / "adapter").is_dir()
