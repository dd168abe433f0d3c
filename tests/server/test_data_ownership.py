"""Each node reads only its shard; the ServerApp opens no data and learns sizes from the nodes."""

from pathlib import Path

import pytest

from florec.recdata import shard_files
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.shard import NO_DATA_ENV, shards_in_memory
from florec.recdata.shard_files import shard_dir, write_shards
from florec.server.app import run_federated
from florec.server.federation import item_catalogue
from florec.server.loop import learn_partitions
from florec.sim.local_grid import LocalGrid

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2}
SEQ = {"model": "sasrec", "max-seq-len": 8, "seq-layers": 1, "lr": 0.01,
       "local-batch-size": 64, "device": "cpu"}


def sharded_grid(cfg, out: Path) -> tuple[LocalGrid, list[Path]]:
    """An in-process grid whose node i has data-dir = its own shard folder only."""
    folders = write_shards(cfg, out)
    grid = LocalGrid(cfg.to_flower(), len(folders))
    for ctx in grid.contexts.values():
        ctx.node_config["data-dir"] = str(folders[int(ctx.node_config["partition-id"])])
    return grid, folders


def no_data_anywhere(monkeypatch) -> list[str]:
    """Make every dataset and split loader raise; returns the list of shard folders read."""
    def boom(*args, **kwargs):
        raise AssertionError("a dataset loader was called in a sharded run")

    monkeypatch.setenv(NO_DATA_ENV, "1")  # get_split refuses
    monkeypatch.setattr("florec.recdata.datasets.load_dataset", boom)
    monkeypatch.setattr("florec.recdata.store._cached", boom)
    read: list[str] = []
    load = shard_files.load_shard

    def recording(folder, cfg=None):
        read.append(str(folder))
        return load(folder, cfg)

    monkeypatch.setattr(shard_files, "load_shard", recording)
    return read


@pytest.mark.parametrize("extra", [
    {"aggregation": "sparse", "users-per-node": 12, "cohort-fraction": 0.5},
    {"mf-loss": "fs-point", "split": "ratio-fs"},  # item popularity by secure sum
    {"algorithm": "fedcia", "clients-per-node": 2, "align-steps": 5},
    SEQ,
], ids=["fedavg-cohorts", "fair-secure-sum", "fedcia", "sasrec"])
def test_a_sharded_run_equals_the_in_memory_run_with_no_loader_on_any_side(
        tmp_path, monkeypatch, extra):
    cfg = parse_run_config(SMALL | extra)
    n = len(shards_in_memory(cfg)[0])
    ref = run_federated(LocalGrid(cfg.to_flower(), n), cfg, tmp_path / "ref")
    grid, folders = sharded_grid(cfg, tmp_path / "shards")
    read = no_data_anywhere(monkeypatch)
    got = run_federated(grid, cfg, tmp_path / "sharded")
    assert sorted(read) == sorted(map(str, folders))  # each node read its own shard, once
    assert set(got["metrics"]) == set(ref["metrics"]) and got["metrics"]["num-users"] == 40
    for key, value in ref["metrics"].items():
        assert got["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert got["best_round"] == ref["best_round"] and got["num_nodes"] == n


def test_nodes_given_each_other_s_shards_stop_the_run_with_the_node_s_reason(tmp_path):
    cfg = parse_run_config(SMALL)
    grid, folders = sharded_grid(cfg, tmp_path / "shards")
    ctx0, ctx1 = (c for c in grid.contexts.values() if c.node_config["partition-id"] in (0, 1))
    ctx0.node_config["data-dir"], ctx1.node_config["data-dir"] = str(folders[1]), str(folders[0])
    with pytest.raises(ConfigError, match="could not report its data: .*is partition 1 but this "
                                          "node has partition-id 0"):
        run_federated(grid, cfg, tmp_path / "out")


def test_a_partition_reply_holds_sizes_only(tmp_path):
    cfg = parse_run_config(SMALL)
    grid, _ = sharded_grid(cfg, tmp_path / "shards")
    facts, failed = learn_partitions(grid, 30.0)
    assert not failed and len(facts) == 4
    for reply in facts.values():
        assert set(reply) == {"partition-id", "num-users", "num-partitions", "population",
                              "num-items"}
    assert sorted(r["num-users"] for r in facts.values()) == [10, 10, 10, 10]


def test_the_server_gets_the_public_item_text_from_a_node_s_shard(tmp_path, monkeypatch):
    cfg = parse_run_config(SMALL)
    want = shards_in_memory(cfg)[1](0).item_texts()
    grid, _ = sharded_grid(cfg, tmp_path / "shards")
    no_data_anywhere(monkeypatch)
    assert item_catalogue(grid, 60, 30.0) == want and want[0]


def test_loopback_deployment_gives_node_i_its_shard_and_the_server_side_no_data(
        tmp_path, monkeypatch):
    from florec.sim import deploy

    started: dict[str, tuple[list[str], dict[str, str]]] = {}

    class Recorded:
        def __init__(self, name, cmd, env, log_dir, echo=False):
            started[name] = (cmd, env)

    monkeypatch.setattr(deploy, "Service", Recorded)
    monkeypatch.setattr(deploy.LoopbackDeployment, "_wait", lambda *a, **k: None)
    dep = deploy.LoopbackDeployment(2, tmp_path / "logs", shards=tmp_path / "shards")
    try:
        dep.start()
    finally:
        dep.services.clear()
        dep.stop()
    for name in ("superlink", "superexec-server"):
        assert started[name][1][NO_DATA_ENV] == "1"
    for i in range(2):
        cmd, env = started[f"supernode-{i}"]
        node_config = cmd[cmd.index("--node-config") + 1]
        assert f'data-dir="{shard_dir(tmp_path / "shards", i)}"' in node_config
        assert env[NO_DATA_ENV] == "1"
