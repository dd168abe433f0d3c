"""Central CoT-Rec's stage cache: a rerun loads the retriever and the adapter, knobs miss."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import florec.models.llm.lora as lora
import florec.sim.central_cotrec as central
from florec.models.stage_cache import StageCache, StageCacheWarning
from florec.recdata.runconfig import parse_run_config

BASE = {"model": "cotrec", "dataset": "synthetic", "synthetic-users": 40,
        "synthetic-items": 30, "synthetic-interactions": 12, "dim": 16, "heads": 2,
        "max-seq-len": 10, "lr": 0.005, "ks": "10", "device": "cpu", "encoder": "tiny",
        "llm-backend": "tiny", "llm-cache": True, "llm-max-concurrency": 1,
        "cotrec-mapb-users": 2, "cotrec-item-tokens": 4, "cotrec-user-tokens": 4}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """The module's own stage cache (the call cache and the tokenizer are the session's)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("stage-cache")
        mp.setattr(central, "StageCache", functools.partial(StageCache, path))
        yield path


class Counts:
    """How often the retriever's epoch and the LoRA training ran."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.epochs = self.lora = 0
        epoch, train = central.train_epoch, lora.train_choices

        def counted_epoch(*args, **kwargs):
            self.epochs += 1
            return epoch(*args, **kwargs)

        def counted_train(*args, **kwargs):
            self.lora += 1
            return train(*args, **kwargs)

        mp.setattr(central, "train_epoch", counted_epoch)
        mp.setattr(lora, "train_choices", counted_train)


def _run(mp: pytest.MonkeyPatch, out: Path | None = None, **kw: object):
    counts = Counts(mp)
    run = central.run_central_cotrec(parse_run_config(BASE | kw), epochs=2, batch_size=64,
                                     out_dir=out)
    return run, counts


@pytest.fixture(scope="module")
def first(cache_dir, tmp_path_factory):
    """The run that fills the caches."""
    out = tmp_path_factory.mktemp("first")
    with pytest.MonkeyPatch.context() as mp:
        run, counts = _run(mp, out)
    return run, counts, out


def test_results_stay_running_until_the_ranker_ends(cache_dir, monkeypatch, tmp_path):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(central, "run_ranker", killed)
    with pytest.raises(KeyboardInterrupt):  # cache off: the module's stages stay empty
        _run(monkeypatch, tmp_path, **{"cotrec-stage-cache": False})
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "running"


def test_first_run_trains_both_stages_and_stores_them(first, cache_dir):
    run, counts, _ = first
    assert counts.epochs == 2 and counts.lora == 1
    assert run["stage_cache"] == {"cotrec-retriever": "miss", "cotrec-lora": "miss"}
    assert run["stage_cache_hits"] == 0
    assert len(list(cache_dir.rglob("*.safetensors"))) == 2


def test_rerun_loads_both_stages_and_reproduces_every_metric(first, monkeypatch, tmp_path):
    before, _, first_out = first
    run, counts = _run(monkeypatch, tmp_path)
    assert counts.epochs == 0 and counts.lora == 0  # nothing trained
    assert run["stage_cache"] == {"cotrec-retriever": "hit", "cotrec-lora": "hit"}
    assert run["stage_cache_hits"] == 2
    for key in ("metrics", "valid_metrics", "best_round", "epochs_run", "ranker"):
        assert run[key] == before[key], key
    # every LLM answer, the LoRA ranker's included, came from the call cache: the loaded
    # adapter has the trained adapter's digest
    assert run["llm"]["llm_calls"] == 0 and run["llm"]["llm_cache_hits"] > 0
    assert run["phases"]["ranker-lora"]["llm_cache_hits"] > 0
    lines = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    trained = [json.loads(x) for x in (first_out / "rounds.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in lines] == [r["valid"] for r in trained]
    for key in ("seconds", "train_seconds", "rss_peak_mb", "rss_growth_mb"):  # as stored
        assert [r[key] for r in lines] == [r[key] for r in trained], key
    assert all(r["stage_cache"] == "hit" for r in lines)
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert saved["metrics"] == before["metrics"] and saved["stage_cache_hits"] == 2
    assert (tmp_path / "adapter").is_dir()


def test_a_lora_knob_misses_the_adapter_only(first, monkeypatch):
    run, counts = _run(monkeypatch, **{"cotrec-lora-r": 4})
    assert run["stage_cache"] == {"cotrec-retriever": "hit", "cotrec-lora": "miss"}
    assert counts.epochs == 0 and counts.lora == 1
    assert run["metrics"] == first[0]["metrics"]


def test_a_retriever_knob_or_the_seed_misses_the_retriever(first, monkeypatch):
    run, counts = _run(monkeypatch, **{"dropout": 0.3, "cotrec-ranker": "none"})
    assert run["stage_cache"] == {"cotrec-retriever": "miss"} and counts.epochs == 2
    run, counts = _run(monkeypatch, **{"seed": 1, "cotrec-ranker": "none"})
    assert run["stage_cache"] == {"cotrec-retriever": "miss"} and counts.epochs == 2


def test_the_switch_turns_the_cache_off(first, monkeypatch):
    run, counts = _run(monkeypatch, **{"cotrec-stage-cache": False})
    assert run["stage_cache"] == {"cotrec-retriever": "off", "cotrec-lora": "off"}
    assert counts.epochs == 2 and counts.lora == 1
    assert run["metrics"] == first[0]["metrics"]  # training is deterministic
    for label in ("untuned", "lora"):
        for key in ("ndcg@10", "hr@10", "mapb"):
            assert run["ranker"][label][key] == first[0]["ranker"][label][key], (label, key)


def test_a_corrupt_entry_warns_retrains_and_is_rewritten(first, cache_dir, monkeypatch):
    path = min((cache_dir / "cotrec-retriever").glob("*.safetensors"),
               key=lambda p: p.stat().st_mtime_ns)  # the first run's retriever
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(StageCacheWarning, match="unreadable cotrec-retriever entry"):
        run, counts = _run(monkeypatch)
    assert run["stage_cache"] == {"cotrec-retriever": "corrupt", "cotrec-lora": "hit"}
    assert counts.epochs == 2 and counts.lora == 0
    assert run["metrics"] == first[0]["metrics"]
    assert run["ranker"] == first[0]["ranker"]
    run, counts = _run(monkeypatch)  # the retrained stage replaced the broken entry
    assert run["stage_cache"] == {"cotrec-retriever": "hit", "cotrec-lora": "hit"}
    assert counts.epochs == 0


def test_an_unwritable_stage_cache_warns_and_the_run_finishes(monkeypatch, tmp_path):
    (tmp_path / "not-a-folder").write_text("")  # the cache root is a file: saving fails
    monkeypatch.setattr(central, "StageCache",
                        functools.partial(StageCache, tmp_path / "not-a-folder"))
    with pytest.warns(StageCacheWarning, match="could not store the cotrec-retriever entry"):
        run, counts = _run(monkeypatch, tmp_path / "out", **{"cotrec-ranker": "none"})
    assert counts.epochs == 2 and run["stage_cache"] == {"cotrec-retriever": "miss"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["status"] == "finished"
