"""The ServerApp's round loop end to end on an in-process grid (real handlers, no Ray)."""

import json

import numpy as np
import pytest
from flwr.app import MessageType

from client.app import PRIVATE_KEY
from recdata.errors import ConfigError
from recdata.runconfig import parse_run_config
from server.app import run_federated
from sim.local_grid import LocalGrid
from strategies.payload import from_record

RUN_KEYS = {"method", "setting", "dataset", "split", "seed", "metrics", "best_round", "rounds",
            "wall_s", "bytes_up", "bytes_down", "peak_rss_mb"}


def run(tmp_path, config, num_nodes=None, fail=None):
    cfg = parse_run_config(config)
    grid = LocalGrid(cfg.to_flower(), num_nodes or cfg.num_nodes, fail=fail)
    return grid, run_federated(grid, cfg, tmp_path / "out")


@pytest.mark.parametrize("aggregation", ["dense", "sparse"])
def test_federated_run_writes_results_in_the_documented_schema(tmp_path, small_config,
                                                               aggregation):
    small_config["aggregation"] = aggregation
    _, result = run(tmp_path, small_config)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished" and RUN_KEYS <= set(saved["runs"][0])
    assert saved["runs"][0]["setting"] == "federated"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rows)
    assert 0.0 <= result["metrics"]["recall@10"] <= 1.0
    assert result["metrics"]["num-users"] == 40
    assert json.loads((out / "config.json").read_text())["config"]["aggregation"] == aggregation


def test_private_user_embeddings_never_leave_the_node(tmp_path, small_config):
    grid, _ = run(tmp_path, small_config)
    private = np.concatenate([from_record(ctx.state.array_records[PRIVATE_KEY])["user_emb"]
                              for ctx in grid.contexts.values()])
    for msg in grid.received:
        for record in msg.content.array_records.values():
            for name, arr in from_record(record).items():
                assert "user" not in name
                flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr[None]
                if flat.shape[-1] == private.shape[1]:
                    for row in private:
                        assert not np.any(np.all(np.isclose(flat, row), axis=1))


def test_learning_improves_validation_on_clustered_data(tmp_path, small_config):
    small_config.update({"num-rounds": 8, "lr": 0.05, "synthetic-users": 120,
                         "synthetic-interactions": 20, "dim": 16})
    _, result = run(tmp_path, small_config)
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert rows[-1]["valid"]["ndcg@10"] > rows[0]["valid"]["ndcg@10"]


def test_a_crashing_client_is_skipped_and_the_run_finishes(tmp_path, small_config):
    def fail(pid, kind):
        return pid == 1 and kind == MessageType.TRAIN

    _, result = run(tmp_path, small_config, fail=fail)
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert result["rounds"] == 2
    assert all(r["train"]["num-replies"] == 3 and len(r["dropped"]) == 1 for r in rows)


def test_node_count_mismatch_is_one_clear_line(tmp_path, small_config):
    small_config["node-wait-s"] = 0.5
    with pytest.raises(ConfigError) as err:
        run(tmp_path, small_config, num_nodes=3)
    assert "num-supernodes=4" in str(err.value) and "\n" not in str(err.value)


def test_results_survive_a_run_that_dies_mid_way(tmp_path, small_config):
    small_config["num-rounds"] = 3
    calls = {"n": 0}

    def fail(pid, kind):
        calls["n"] += kind == MessageType.EVALUATE
        return False

    cfg = parse_run_config(small_config)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, fail=fail)
    original = grid.push_messages

    def dying_push(messages):
        messages = list(messages)
        if calls["n"] >= 2 * cfg.num_nodes and messages[0].metadata.message_type == "train":
            raise KeyboardInterrupt
        return original(messages)

    grid.push_messages = dying_push
    with pytest.raises(KeyboardInterrupt):
        run_federated(grid, cfg, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["status"] == "running" and saved["runs"][0]["rounds"] == 2
    assert len((tmp_path / "out" / "rounds.jsonl").read_text().splitlines()) == 2


def test_fedavg_on_ml100k_learns_in_three_rounds(tmp_path, shared_data):
    """Real data: 10 nodes over ML-100K's 943 users, leave-one-out."""
    config = {"dataset": "ml-100k", "data-dir": str(shared_data), "num-nodes": 10,
              "num-rounds": 3, "dim": 16}
    _, result = run(tmp_path, config)
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert result["metrics"]["num-users"] == 943
    assert rows[-1]["valid"]["ndcg@10"] > rows[0]["valid"]["ndcg@10"]
