"""Poisoning attacks on FedAvg of SASRec: fake sequences, sign flipping, whole runs."""

import json

import numpy as np
import pytest

from florec.client.attacks import AttackKnowledge, log_hosted, malicious_users
from florec.client.seq_attacks import fake_windows, mix_states
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.registry import check_algorithm

SEQ = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 50,
       "synthetic-interactions": 12, "dim": 16, "num-nodes": 3, "num-rounds": 2,
       "model": "sasrec", "max-seq-len": 8, "seq-layers": 1, "lr": 0.01,
       "local-batch-size": 64, "device": "cpu", "attack-targets": "unpopular:2"}


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def run(tmp_path, **extra):
    cfg = parse_run_config(SEQ | extra)
    result = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    return result, rows


def test_fake_sequences_put_a_target_after_each_popular_filler():
    cfg = parse_run_config({"attack": "bandwagon", "attack-fillers": 3, "seed": 1})
    pop = np.arange(100)[::-1].copy()  # item 0 is the most popular
    know = AttackKnowledge(np.array([5]), np.array([90, 95]), pop, None)
    win = fake_windows(cfg, know, np.array([5, 7]), 8)
    assert win.shape == (2, 8) and (win[:, :2] == 0).all()  # 6 tokens, left-padded
    items = win[:, 2:] - 1
    assert set(items[:, 1::2].ravel()) <= {90, 95}  # every second token is a target
    assert (items[:, 0::2] < 50).all()  # fillers among the 50 most popular items
    np.testing.assert_array_equal(win, fake_windows(cfg, know, np.array([5, 7]), 8))


def test_mixing_weights_the_poisoned_model_by_its_positions():
    a, b = {"w": np.zeros(3, np.float32)}, {"w": np.full(3, 4.0, np.float32)}
    np.testing.assert_allclose(mix_states(a, 3, b, 1)["w"], [1.0, 1.0, 1.0])
    assert mix_states(a, 3, b, 0) is a


def test_sequential_attacks_refuse_mf_only_attacks_in_one_line():
    with pytest.raises(ConfigError, match="sequential models take attack"):
        check_algorithm(parse_run_config(SEQ | {"attack": "fedrecattack"}))
    with pytest.raises(ConfigError, match="'sign-flip' is for sequential models"):
        check_algorithm(parse_run_config({"attack": "sign-flip", "attack-targets": "1"}))


@pytest.mark.slow
def test_sasrec_fraction_zero_equals_clean_and_attacks_move_exposure_and_accuracy(tmp_path,
                                                                                  caplog):
    clean, clean_rows = run(tmp_path / "clean")
    zero, zero_rows = run(tmp_path / "zero", attack="bandwagon", **{"attack-fraction": 0.0})
    assert zero["metrics"] == pytest.approx(clean["metrics"], rel=1e-12, abs=1e-15)
    for a, b in zip(zero_rows, clean_rows, strict=True):
        assert a["valid"] == pytest.approx(b["valid"], rel=1e-12, abs=1e-15)
    log_hosted.cache_clear()  # logged once per process: forget earlier tests' lines
    with caplog.at_level("INFO"):
        wagon, _ = run(tmp_path / "bandwagon", attack="bandwagon",
                       **{"attack-fraction": 0.1, "attack-lr": 5.0})
    bad = malicious_users(parse_run_config(SEQ | {"attack": "bandwagon",
                                                  "attack-fraction": 0.1}), 60)
    logged = [line for line in caplog.text.splitlines() if "hosts malicious users" in line]
    assert sorted(int(u) for line in logged for u in line.split("[")[-1].strip("]").split(",")
                  ) == bad.tolist()  # the seeded draw, each user logged by its node
    assert wagon["metrics"]["er@10"] > clean["metrics"]["er@10"] + 0.2
    assert wagon["metrics"]["num-users"] == clean["metrics"]["num-users"] - 6  # 10% left out
    _, flip_rows = run(tmp_path / "flip", attack="sign-flip",
                       **{"attack-fraction": 0.1, "attack-lr": 10.0})
    last = clean_rows[-1]["valid"]["ndcg@10"]
    assert flip_rows[-1]["valid"]["ndcg@10"] < last - 0.02  # the reversed change hurts
    held, _ = run(tmp_path / "median", attack="bandwagon", defense="median",
                  **{"attack-fraction": 0.1, "attack-lr": 5.0})
    assert held["metrics"]["er@10"] < wagon["metrics"]["er@10"]
