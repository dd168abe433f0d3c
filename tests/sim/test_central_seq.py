"""Central training of sequential models: results files, protocol, CLI."""

import json

import pytest
from typer.testing import CliRunner

from florec.recdata.runconfig import parse_run_config
from florec.sim.central import run_central
from florec.sim.cli import app

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 50,
         "synthetic-interactions": 12, "dim": 8, "max-seq-len": 12, "oracle-future": 3,
         "seq-layers": 1, "lr": 0.01, "device": "cpu"}


@pytest.mark.parametrize("extra", [{"model": "sasrec"}, {"model": "gru4rec"},
                                   {"model": "sasrec", "oracle": True, "seq-loss": "bpr"},
                                   {"model": "gru4rec", "oracle": True}])
def test_central_run_writes_results_at_the_best_validation_epoch(tmp_path, extra):
    cfg = parse_run_config(SMALL | extra)
    run = run_central(cfg, 3, 64, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "finished" and saved["runs"][0]["setting"] == "central"
    assert [r["round"] for r in rows] == [1, 2, 3]
    best = max(rows, key=lambda r: r["valid"]["ndcg@10"])
    assert run["best_round"] == best["round"]
    assert run["valid_metrics"]["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"])
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert 0.0 <= run["metrics"][key] <= 1.0
    assert run["metrics"]["num-users"] == 40
    assert run["method"] == (f"oracle4rec-{extra['model']}" if extra.get("oracle")
                             else extra["model"])
    if extra.get("oracle"):
        assert rows[0]["train"]["og-loss"] > 0 and rows[0]["train"]["future-loss"] > 0


def test_same_seed_gives_the_same_central_run(tmp_path):
    cfg = parse_run_config(SMALL | {"model": "sasrec", "oracle": True})
    a, b = run_central(cfg, 2, 64), run_central(cfg, 2, 64)
    assert a["metrics"] == b["metrics"]


@pytest.mark.parametrize("oracle", [False, True])
def test_training_beats_the_untrained_model_on_clustered_data(oracle):
    import numpy as np

    from florec.client.trainers.sequential import sequence_metric_sums
    from florec.models.registry import sequential_from_config
    from florec.recdata.sequences import UserSequences
    from florec.recdata.store import get_split

    cfg = parse_run_config(SMALL | {"model": "sasrec", "synthetic-users": 120, "dim": 16,
                                    "oracle": oracle})
    run = run_central(cfg, 4, 64)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, "", cfg.min_rating,
                         cfg.synthetic_params())
    seqs, users = UserSequences.from_split(split), np.arange(split.n_users)
    sums = sequence_metric_sums(sequential_from_config(cfg, split.n_items),
                                {"valid": seqs.inputs(users, "valid", 12),
                                 "test": seqs.inputs(users, "test", 12)},
                                {p: split.mask_for(p) for p in ("valid", "test")},
                                {p: split.matrix(p) for p in ("valid", "test")}, [10])
    untrained = sums["valid/ndcg@10"] / sums["valid/num-users"]
    assert run["valid_metrics"]["ndcg@10"] > 1.5 * untrained


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_florec_central_runs_sequential_models(tmp_path, model):
    args = ["central", "--dataset", "synthetic", "--model", model, "--epochs", "2",
            "--batch-size", "64", "--out", str(tmp_path)]
    for key, value in SMALL.items():
        if key not in ("dataset",):
            args += ["-c", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["method"] == model
