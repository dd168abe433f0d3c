"""Centralised LLKD end to end on synthetic item text (scripted and tiny teachers, tiny encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from florec.models.llm import LLMConfig, build_llm
from florec.recdata.runconfig import parse_run_config
from florec.sim.central_llkd import load_task, prepare, run_central_llkd, run_selection

BASE = {"model": "llkd", "dataset": "synthetic", "synthetic-users": 120,
        "synthetic-items": 150, "synthetic-interactions": 10, "llm-backend": "scripted",
        "llm-cache": False, "encoder": "tiny", "llkd-classes": 4, "llkd-ema": 0.9,
        "llkd-batch-size": 16, "scripted-p": 0.7}


def _cfg(**kw: object):
    return parse_run_config(BASE | kw)


def test_central_run_writes_gold_metrics_gate_and_selection(tmp_path):
    run = run_central_llkd(_cfg(), epochs=3, out_dir=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert saved["method"] == "llkd-llkd" and run["metrics"] == saved["metrics"]
    assert 0.0 <= run["metrics"]["macro-f1"] <= 1.0
    assert 0.0 < run["metrics"]["share_ever"] <= 1.0
    assert run["gate"]["n"] == run["pool"] and run["gate"]["accuracy"] > run["gate"]["majority"]
    assert len(run["selection"]["selected_per_epoch"]) == 3
    assert run["llm"]["llm_calls"] > 0 and set(run["phases"]) >= {"embed", "teacher", "student"}


def test_baselines_get_llkd_budget_and_never_exceed_it():
    cfg = _cfg()
    prep = prepare(cfg)
    llkd = run_selection(prep, cfg, "llkd", 3)
    for rule in ("random", "teacher", "student"):
        out = run_selection(prep, cfg.model_copy(update={"llkd_selection": rule}), rule, 3)
        assert out["budget"] == llkd["selected_ever"]
        assert out["selected_ever"] <= out["budget"]


def test_tiny_llm_teacher_scores_the_lettered_class_prompts():
    cfg = _cfg(**{"llm-backend": "tiny", "llkd-teacher-items": 12})
    tiny = build_llm(LLMConfig(backend="tiny", cache=False, progress=False))
    prep = prepare(cfg, llm=tiny)
    assert prep.teacher.shape == (12, len(prep.task.classes))
    np.testing.assert_allclose(prep.teacher.sum(1), 1.0, atol=1e-6)


def test_task_inputs_hold_no_gold_category():
    task = load_task(_cfg())
    assert len(task.classes) == 4
    labelled = task.labelled
    assert len(labelled) > 0
    assert not any(task.classes[task.gold[i]] in task.inputs[i] for i in labelled)


def test_unknown_dataset_is_refused_with_the_fix():
    from florec.models.llkd.task import build_task
    from florec.recdata.errors import ConfigError

    with pytest.raises(ConfigError, match="use ml-100k, amazon-scientific or synthetic"):
        build_task("ml-1m-ish", [], 4)
