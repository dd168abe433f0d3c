"""Centralized MF with each debiasing loss: `florec central -c mf-loss=...` end to end."""

import json

import numpy as np
import pytest
import torch

from florec.models.mf import MF
from florec.recdata.errors import ConfigError
from florec.recdata.fair_sampling import TrainIndex
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.sim.central import run_central
from florec.sim.central_fair import FairTrainer

SMALL = {"dataset": "synthetic", "synthetic-users": 30, "synthetic-items": 40,
         "synthetic-interactions": 8, "dim": 8, "split": "ratio-fs", "lr": 0.05,
         "weight-decay": 1e-3, "init-std": 0.1, "ks": "10,20", "selection-metric": "recall@20"}
LOSSES = ["ubpr", "cpr", "fs-pair", "wmf", "relmf", "du", "fs-point"]


@pytest.mark.parametrize("loss", LOSSES)
def test_florec_central_runs_each_loss_on_synthetic_data(tmp_path, loss):
    from typer.testing import CliRunner

    from florec.sim.cli import app

    args = ["central", "--dataset", "synthetic", "--split", "ratio-fs", "--epochs", "2",
            "--lr", "0.05", "--out", str(tmp_path)]
    for key, value in SMALL.items():
        if key not in ("dataset", "split", "lr"):
            args += ["-c", f"{key}={value}"]
    result = CliRunner().invoke(app, args + ["-c", f"mf-loss={loss}"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert run["method"] == f"mf-{loss}" and run["setting"] == "central"
    m = run["metrics"]
    assert all(np.isfinite(m[k]) for k in ("recall@20", "ndcg@20", "arp@20", "coverage@20"))
    assert m["arp@20"] > 0 and 0 < m["coverage@20"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]


def test_same_seed_gives_the_same_run_and_training_beats_the_untrained_model():
    """The test split (never used for selection) of the trained model beats epoch 0's."""
    cfg = parse_run_config(SMALL | {"mf-loss": "fs-pair", "synthetic-users": 100,
                                    "synthetic-items": 50, "synthetic-interactions": 12})
    a, b = run_central(cfg, 6, 64), run_central(cfg, 6, 64)
    assert a["metrics"] == b["metrics"]
    untrained = run_central(cfg, 0, 64)
    assert untrained["best_round"] == 0 and a["best_round"] >= 1
    assert a["metrics"]["recall@20"] > untrained["metrics"]["recall@20"] + 0.05


def test_fs_pair_epoch_counts_dropped_pairs_and_item_bias_stays_zero():
    cfg = parse_run_config(SMALL)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    model = MF(split.n_users, split.n_items, dim=4)
    model.item_bias.requires_grad_(False)
    opt = torch.optim.Adam([model.user_emb, model.item_emb], lr=0.05, weight_decay=1e-3)
    trainer = FairTrainer(model, TrainIndex.from_csr(split.matrix("train")), "fs-pair", opt,
                          torch.Generator().manual_seed(0))
    out = trainer.epoch(1)  # batches of one pair: no partner exists, every pair is dropped
    assert out["dropped-pairs"] == split.matrix("train").nnz
    out = trainer.epoch(64)
    assert out["dropped-pairs"] < split.matrix("train").nnz / 4
    assert torch.all(model.item_bias == 0)


def test_a_non_mf_model_with_a_debiasing_loss_is_one_clear_line():
    cfg = parse_run_config(SMALL | {"mf-loss": "fs-point", "model": "lightgcn"})
    with pytest.raises(ConfigError, match="needs model 'mf'"):
        run_central(cfg, 1, 64)
