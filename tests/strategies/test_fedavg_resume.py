"""FedAvg-MF with a server optimiser and kept user optimizer state resumes to the same numbers."""

import pytest

from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.registry import check_algorithm

BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
        "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 4,
        "checkpoint-every": 1, "store-spill-mb": 0.0, "aggregation": "sum",
        "server-opt": "adam", "server-lr": 0.05, "keep-user-opt-state": True}


def run(out, **changes):
    cfg = parse_run_config(BASE | changes | {"out-dir": str(out)})
    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, out)


def test_a_resumed_run_with_server_adam_and_user_state_matches_an_uninterrupted_one(tmp_path):
    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", **{"num-rounds": 2})
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed["rounds"] == 4 and resumed["method"] == "fedavg-mf-sum-serveradam"
    for part in ("valid_metrics", "metrics"):
        for key, value in whole[part].items():
            assert resumed[part][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (part, key)


@pytest.mark.parametrize("extra", [{"model": "sasrec", "aggregation": "sum"},
                                   {"algorithm": "fedcia", "aggregation": "sum"},
                                   {"mf-loss": "fs-pair", "keep-user-opt-state": True}])
def test_new_fedavg_knobs_outside_fedavg_mf_bpr_are_refused_in_one_line(extra):
    with pytest.raises(ConfigError, match="implemented for algorithm 'fedavg' with model 'mf'"):
        check_algorithm(parse_run_config(extra))
