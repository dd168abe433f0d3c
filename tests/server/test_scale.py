"""Run-level scale behaviour: bucket-size invariance and seeded user cohorts."""

import json

import numpy as np
import pytest
from flwr.app import MessageType

from florec.client.app import PRIVATE_KEY
from florec.protocol.codec import from_record
from florec.recdata.cohort import sample_cohort
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

POP = {"dataset": "synthetic", "synthetic-users": 100, "synthetic-items": 80,
       "synthetic-interactions": 10, "dim": 8, "num-rounds": 2, "lr": 0.05}


def run(tmp_path, config, random_ids=None):
    cfg = parse_run_config(config)
    n = -(-cfg.synthetic_users // cfg.users_per_node) if cfg.users_per_node else cfg.num_nodes
    grid = LocalGrid(cfg.to_flower(), n, random_ids=random_ids)
    result = run_federated(grid, cfg, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    return grid, result, rows


@pytest.mark.parametrize("extra", [{}, {"aggregation": "sparse", "cohort-fraction": 0.2}])
def test_metrics_do_not_depend_on_users_per_node(tmp_path, extra):
    results = {}
    for upn in (1, 10, 100):
        _, results[upn], rows = run(tmp_path / str(upn), POP | extra | {"users-per-node": upn})
        assert results[upn]["num_nodes"] == 100 // upn
    for upn in (10, 100):
        for key, value in results[1]["metrics"].items():
            assert results[upn]["metrics"][key] == pytest.approx(value, abs=1e-5), (upn, key)
        assert results[upn]["best_round"] == results[1]["best_round"]


def test_cohorts_are_seeded_logged_and_independent_of_buckets(tmp_path):
    config = POP | {"cohort-size": 7, "num-rounds": 3}
    logged = {}
    for upn in (5, 25):
        _, _, rows = run(tmp_path / str(upn), config | {"users-per-node": upn}, random_ids=upn)
        logged[upn] = [r["cohort"]["users"] for r in rows]
        assert all(r["cohort"]["size"] == 7 and r["train"]["num-users"] == 7 for r in rows)
    assert logged[5] == logged[25]
    assert logged[5] == [sample_cohort(0, r, 100, size=7).tolist() for r in (1, 2, 3)]
    assert len({tuple(c) for c in logged[5]}) == 3  # a new cohort every round
    _, _, other = run(tmp_path / "seed1", config | {"users-per-node": 5, "seed": 1})
    assert [r["cohort"]["users"] for r in other] != logged[5]


def test_only_cohort_users_train_and_nodes_without_them_get_no_message(tmp_path):
    config = POP | {"users-per-node": 10, "cohort-size": 3, "num-rounds": 1}
    grid, _, rows = run(tmp_path, config, random_ids=3)
    cohort = rows[0]["cohort"]["users"]
    touched = {u // 10 for u in cohort}
    assert grid.pushed[MessageType.TRAIN] == len(touched) < 10
    assert rows[0]["train"]["num-replies"] == len(touched)
    cfg = parse_run_config(config)
    from florec.models.base import seeded_rows
    from florec.models.mf import USER_SALT

    for ctx in grid.contexts.values():
        pid = int(ctx.node_config["partition-id"])
        users = np.arange(pid * 10, pid * 10 + 10)
        start = seeded_rows(users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
        if PRIVATE_KEY not in ctx.state.array_records:
            assert pid not in touched
            continue
        now = from_record(ctx.state.array_records[PRIVATE_KEY])["user_emb"]
        changed = ~np.all(np.isclose(now, start), axis=1)
        np.testing.assert_array_equal(users[changed], [u for u in cohort if u // 10 == pid])


def test_node_sampling_still_applies_on_top_of_cohorts(tmp_path):
    config = POP | {"users-per-node": 10, "fraction-train": 0.5, "num-rounds": 2}
    grid, _, rows = run(tmp_path, config)
    assert grid.pushed[MessageType.TRAIN] == 10 and all(
        r["train"]["num-replies"] == 5 for r in rows)


@pytest.mark.parametrize("extra", [{"algorithm": "fedcia"}, {"algorithm": "local"}])
def test_cohorts_are_refused_for_whole_model_clients(tmp_path, extra):
    with pytest.raises(ConfigError) as err:
        run(tmp_path, POP | {"num-nodes": 4, "cohort-fraction": 0.5} | extra)
    assert "fraction-train" in str(err.value) and "\n" not in str(err.value)
