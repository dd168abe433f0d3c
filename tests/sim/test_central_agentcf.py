"""Centralised AgentCF(++) end to end: the scripted positive control, cached replay, results."""

from __future__ import annotations

import json

import pytest

from florec.models.agentcf.pipeline import make_agent_llm
from florec.models.llm import LLMConfig, build_llm
from florec.models.llm.cache import CachedLLM, CallCache
from florec.recdata.runconfig import parse_run_config
from florec.sim.central_agentcf import run_central_agentcf

BASE = {"dataset": "synthetic", "llm-backend": "scripted", "llm-cache": False,
        "agentcf-users": 100}



def _mrr(encoder: object, seed: int = 0, **kw: object) -> float:
    cfg = parse_run_config(BASE | {"split-seed": seed} | kw)
    llm = make_agent_llm(cfg)
    llm.progress = False
    return run_central_agentcf(cfg, llm=llm, encoder=encoder)["metrics"]["mrr"]


@pytest.mark.parametrize("seed", [0, 1])
def test_scripted_control_dual_memory_beats_one_shared_memory(seed, word_encoder):
    shared = _mrr(word_encoder, seed, model="agentcf")
    assert _mrr(word_encoder, seed, model="agentcf++", **{"agentcf-memory": "shared",
                                            "agentcf-groups": 0}) == shared
    dual = _mrr(word_encoder, seed, model="agentcf++", **{"agentcf-groups": 0})
    assert dual > shared + 0.1 and shared > 0.35  # both above random (0.29)


def test_scripted_control_groups_help_when_users_follow_their_group(word_encoder):
    trend = {"model": "agentcf++", "agentcf-synthetic-trend": 0.6}
    gains = [_mrr(word_encoder, s, **trend)
             - _mrr(word_encoder, s, **trend, **{"agentcf-groups": 0}) for s in (0, 1)]
    assert min(gains) > 0.02


def test_cached_replay_reproduces_memories_and_ranks_exactly(tmp_path, word_encoder):
    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 3,
                            "agentcf-train-max": 1, "agentcf-max-tokens": 8,
                            "agentcf-kmeans-k": 4})

    inner = build_llm(LLMConfig(backend="tiny", cache=False, progress=False, batch_size=64))

    def run(out: str):
        llm = CachedLLM(inner, CallCache(tmp_path / "calls.sqlite"))
        before = llm.stats.copy()
        result = run_central_agentcf(cfg, tmp_path / out, llm=llm, encoder=word_encoder)
        return result, llm.stats.since(before)

    first, stats1 = run("a")
    second, stats2 = run("b")
    assert stats1.llm_calls > 0 and stats2.llm_calls == 0
    assert stats2.llm_cache_hits == stats1.llm_calls + stats1.llm_cache_hits
    for name in ("memories.jsonl", "ranks.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert first["metrics"] == second["metrics"]
    saved = json.loads((tmp_path / "a" / "results.json").read_text())["runs"][0]
    assert saved["method"] == "agentcf++" and saved["random_mrr"] == pytest.approx(0.2929, 1e-3)
    assert {"train", "groups", "rank"} <= set(saved["phases"])
    assert saved["train"]["item_update_bytes"] > 0


def test_title_list_ranking_matches_the_letter_ranking_of_the_scripted_control():
    kw = {"model": "agentcf++", "agentcf-groups": 0, "agentcf-users": 40}
    cfg = parse_run_config(BASE | kw)
    choice = run_central_agentcf(cfg, llm=make_agent_llm(cfg))
    cfg_t = parse_run_config(BASE | kw | {"agentcf-rank": "titles"})
    titles = run_central_agentcf(cfg_t, llm=make_agent_llm(cfg_t))
    assert titles["match_failures"] == 0
    assert titles["metrics"] == choice["metrics"]


def test_a_run_from_a_partly_filled_cache_equals_one_from_an_empty_cache(tmp_path,
                                                                         word_encoder):
    import sqlite3

    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic", "agentcf-users": 3,
                            "agentcf-train-max": 1, "agentcf-max-tokens": 8,
                            "agentcf-kmeans-k": 4})
    inner = build_llm(LLMConfig(backend="tiny", cache=False, progress=False, batch_size=64))
    path = tmp_path / "calls.sqlite"
    run_central_agentcf(cfg, tmp_path / "a", llm=CachedLLM(inner, CallCache(path)),
                        encoder=word_encoder)
    with sqlite3.connect(path) as db:  # forget every other answer: the rest form new batches
        kept = db.execute("DELETE FROM calls WHERE rowid % 2 = 0").rowcount
    llm = CachedLLM(inner, CallCache(path))
    run_central_agentcf(cfg, tmp_path / "b", llm=llm, encoder=word_encoder)
    assert kept > 0 and llm.stats.llm_calls > 0 and llm.stats.llm_cache_hits > 0
    for name in ("memories.jsonl", "ranks.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
