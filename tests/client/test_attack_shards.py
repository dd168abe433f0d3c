"""Attacks and exposure on sharded nodes: public knowledge gathered from shards, nothing else."""

import numpy as np
import pytest

from florec.client import node_store
from florec.client.attacks import knowledge_from_public, knowledge_from_split
from florec.protocol.codec import from_record
from florec.protocol.public_knowledge import SETUP, combine_reports, node_report
from florec.recdata import shard_files
from florec.recdata.runconfig import parse_run_config
from florec.recdata.shard import NO_DATA_ENV, shards_in_memory
from florec.recdata.shard_files import write_shards
from florec.recdata.store import get_split
from florec.server.app import run_federated
from florec.server.secagg import SETUP_TYPE
from florec.sim.local_grid import LocalGrid

SMALL = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 80,
         "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
         "aggregation": "sparse", "attack-targets": "unpopular:3", "attack-public": 0.3}


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def test_public_knowledge_combined_from_shards_equals_the_whole_split_s():
    cfg = parse_run_config(SMALL | {"attack": "fedrecattack", "attack-fraction": 0.1})
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, None, cfg.min_rating,
                         cfg.synthetic_params())
    buckets, cut = shards_in_memory(cfg)
    reports = []
    for pid in reversed(range(len(buckets))):  # reply order must not matter
        shard = cut(pid)
        train = shard.split.matrix("train")[shard.users]
        reports.append(node_report(cfg.seed, cfg.attack_public, shard.users, train))
    pub = combine_reports(reports)
    got = knowledge_from_public(cfg, int(pub["num_users"][0]), pub["popularity"],
                                pub["public_user"], pub["public_item"])
    want = knowledge_from_split(cfg, split)
    np.testing.assert_array_equal(got.popularity, want.popularity)
    np.testing.assert_array_equal(got.targets, want.targets)
    np.testing.assert_array_equal(got.malicious, want.malicious)
    assert (got.public != want.public).nnz == 0
    share = want.public.nnz / split.matrix("train").nnz
    assert 0.15 < share < 0.45  # about attack-public = 0.3 of the training interactions


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"attack": "fedrecattack", "attack-fraction": 0.1, "attack-lr": 1.0,
     "defense": "trimmed-mean"},
    {"algorithm": "fedcia", "aggregation": "dense", "attack": "pipattack",
     "attack-fraction": 0.25, "attack-lr": 30.0},
], ids=["fedavg-fedrecattack", "fedcia-pipattack"])
def test_a_sharded_attacked_run_equals_the_in_memory_run(tmp_path, monkeypatch, extra):
    cfg = parse_run_config(SMALL | extra)
    n = len(shards_in_memory(cfg)[0])
    ref = run_federated(LocalGrid(cfg.to_flower(), n), cfg, tmp_path / "ref")
    node_store.clear_cache()
    folders = write_shards(cfg, tmp_path / "shards")
    grid = LocalGrid(cfg.to_flower(), len(folders))
    for ctx in grid.contexts.values():
        ctx.node_config["data-dir"] = str(folders[int(ctx.node_config["partition-id"])])

    def boom(*args, **kwargs):
        raise AssertionError("a dataset loader was called in a sharded run")

    monkeypatch.setenv(NO_DATA_ENV, "1")  # get_split refuses on every side
    monkeypatch.setattr("florec.recdata.datasets.load_dataset", boom)
    monkeypatch.setattr("florec.recdata.store._cached", boom)
    read: list[str] = []
    load = shard_files.load_shard
    monkeypatch.setattr(shard_files, "load_shard",
                        lambda folder, c=None: read.append(str(folder)) or load(folder, c))
    got = run_federated(grid, cfg, tmp_path / "sharded")
    assert sorted(read) == sorted(map(str, folders))
    assert ref["metrics"]["er@10"] > 0.2  # the attack worked, so the equality is not vacuous
    assert set(got["metrics"]) == set(ref["metrics"])
    for key, value in ref["metrics"].items():
        assert got["metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_a_node_missing_from_the_knowledge_reports_stops_the_run_in_one_line(tmp_path):
    cfg = parse_run_config(SMALL | {"attack": "fedrecattack", "attack-fraction": 0.1,
                                    "round-timeout-s": 0.5})
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False,  # node 2's report lost
                     lose=lambda m: m.metadata.dst_node_id == 2 and m.content.config_records.get(
                         "config", {}).get("stage") == "report")
    with pytest.raises(RuntimeError, match="3 of 4 nodes reported") as err:
        run_federated(grid, cfg, tmp_path / "run")
    assert "\n" not in str(err.value)


def _plain_reports(cfg):
    buckets, cut = shards_in_memory(cfg)
    return [node_report(cfg.seed, cfg.attack_public, (s := cut(pid)).users,
                        s.split.matrix("train")[s.users]) for pid in range(len(buckets))]


def test_the_knowledge_setup_sums_counts_securely_and_publishes_the_plain_sum(tmp_path, no_trace):
    # a catalogue long enough that a correlation with a node's counts would stand out
    cfg = parse_run_config(SMALL | {"synthetic-items": 2000, "num-rounds": 1,
                                    "attack": "fedrecattack", "attack-fraction": 0.1})
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    run_federated(grid, cfg, tmp_path / "run")
    reports = _plain_reports(cfg)
    counts = [r["popularity"].astype(np.float64) for r in reports]
    assert all(c.sum() > 0 for c in counts)
    setup = [m for m in grid.sent + grid.received
             if m.has_content() and m.metadata.message_type == SETUP_TYPE]
    replies = {id(m) for m in grid.received}
    published = [m for m in setup if m.content.array_records and dict(
        m.content.config_records.get("config", {})) == {"setup": SETUP, "stage": "publish"}]
    assert len(published) == cfg.num_nodes
    pub = from_record(published[0].content.array_records["arrays"])
    want = combine_reports(reports)
    for key in want:
        np.testing.assert_array_equal(pub[key], want[key], err_msg=key)
    compared = 0
    for msg in setup:
        for rec in msg.content.array_records.values():
            arrays = from_record(rec)
            if any(msg is p for p in published):  # the sum over the nodes is the publication
                arrays.pop("popularity")
            elif id(msg) in replies:  # a node's reply: its counts never by name
                assert not {"popularity", "num_users"} & set(arrays)
            for key, arr in arrays.items():
                flat = arr.ravel().astype(np.float64)
                for want_c in counts:
                    compared += no_trace(flat, want_c, key)
    assert compared >= cfg.num_nodes ** 2  # at least every masked vector against every node
