"""Node shards: only a node's users' rows, global ids, sha256-checked, refused if they misfit."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from florec.recdata.errors import ConfigError, DataError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.shard import node_shard, refuse_data, shards_in_memory
from florec.recdata.shard_files import (
    INDEX,
    MANIFEST,
    check_shards,
    load_shard,
    shard_dir,
    write_shards,
)
from florec.recdata.splits import PARTS
from florec.recdata.store import get_split

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "num-nodes": 3}


def whole_split(cfg):
    return get_split(cfg.dataset, cfg.split, cfg.split_seed, None, cfg.min_rating,
                     cfg.synthetic_params())[0]


def rows(split, part):
    user, item, time = split.parts[part]
    return sorted(zip(user.tolist(), item.tolist(), time.tolist(), strict=True))


@pytest.mark.parametrize("extra", [{}, {"partition": "random", "users-per-node": 7},
                                   {"clients-per-node": 2, "partition": "floor"}])
def test_in_memory_shards_partition_every_part_and_keep_global_ids(extra):
    cfg = parse_run_config(SMALL | extra)
    split = whole_split(cfg)
    buckets, cut = shards_in_memory(cfg)
    shards = [cut(p) for p in range(len(buckets))]
    for p, shard in enumerate(shards):
        assert (shard.split.n_users, shard.split.n_items) == (split.n_users, split.n_items)
        assert [c.tolist() for c in shard.clients] == [b.tolist() for b in buckets[p]]
        for part in PARTS:
            assert set(shard.split.parts[part][0].tolist()) <= set(shard.users.tolist())
    for part in PARTS:  # the shards together are the split, each row exactly once
        assert sorted(r for s in shards for r in rows(s.split, part)) == rows(split, part)


def test_written_shards_load_back_as_the_in_memory_cut(tmp_path):
    cfg = parse_run_config(SMALL)
    folders = write_shards(cfg, tmp_path / "shards")
    assert folders == [shard_dir(tmp_path / "shards", p) for p in range(3)]
    assert check_shards(tmp_path / "shards", cfg) == 3
    _, cut = shards_in_memory(cfg)
    for p, folder in enumerate(folders):
        got, want = load_shard(folder, cfg), cut(p)
        assert got.partition_id == p and got.num_partitions == 3
        assert [c.tolist() for c in got.clients] == [c.tolist() for c in want.clients]
        assert (got.split.n_users, got.split.n_items) == (40, 60)
        for part in PARTS:
            for a, b in zip(got.split.parts[part], want.split.parts[part], strict=True):
                np.testing.assert_array_equal(a, b)
        assert got.item_texts() == want.item_texts() and len(got.item_texts()) == 60
        users = (folder / "synthetic.user.map").read_text().splitlines()[1:]
        assert [int(line.split("\t")[0]) for line in users] == got.users.tolist()
        meta = json.loads((folder / MANIFEST).read_text())
        assert set(meta["files"]) == {f.name for f in folder.iterdir()} - {MANIFEST}


def test_an_edited_shard_file_fails_its_sha256_check(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[1]
    meta = json.loads((folder / "shard.json").read_text())
    for part in ("train", "valid", "test"):  # a shard without .npy rows reads its text files
        del meta["files"][f"synthetic.{part}.npy"]
    (folder / "shard.json").write_text(json.dumps(meta))
    path = folder / "synthetic.train.inter"
    path.write_text(path.read_text() + "0\t1\t2.000000\n")
    with pytest.raises(DataError, match="synthetic.train.inter fails its sha256 check"):
        load_shard(folder, cfg)


def test_a_shard_with_npy_rows_does_not_hash_the_text_rows_it_never_reads(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[1]
    want = load_shard(folder, cfg).split.parts["train"]
    path = folder / "synthetic.train.inter"
    path.write_text(path.read_text() + "0\t1\t2.000000\n")
    got = load_shard(folder, cfg).split.parts["train"]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_shard_cut_for_another_run_or_node_is_refused(tmp_path):
    cfg = parse_run_config(SMALL)
    folders = write_shards(cfg, tmp_path / "shards")
    with pytest.raises(ConfigError, match=r"cut with num-nodes=3 .* run has num-nodes=4"):
        load_shard(folders[0], parse_run_config(SMALL | {"num-nodes": 4}))
    with pytest.raises(ConfigError, match="split='loo'.*split='ratio'"):
        check_shards(tmp_path / "shards", parse_run_config(SMALL | {"split": "ratio"}))
    with pytest.raises(ConfigError, match="is partition 1 but this node has partition-id 0"):
        node_shard(cfg, 0, 3, str(folders[1]))
    with pytest.raises(ConfigError, match="3 buckets"):
        node_shard(cfg, 1, 4, str(folders[1]))
    with pytest.raises(ConfigError, match="not empty"):
        write_shards(cfg, tmp_path / "shards")


def test_a_process_marked_data_free_refuses_to_open_a_split(monkeypatch):
    cfg = parse_run_config(SMALL)
    monkeypatch.setenv("FLOREC_NO_DATA", "1")
    with pytest.raises(DataError, match="holds no interaction data"):
        refuse_data("x")
    with pytest.raises(DataError, match="tried to open the loo split of synthetic"):
        whole_split(cfg)
    monkeypatch.setenv("FLOREC_NO_DATA", "0")
    refuse_data("x")


def test_florec_data_shard_writes_one_folder_per_node(tmp_path):
    from florec.sim.cli import app

    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["data", "shard", "synthetic", "--users-per-node", "15",
                                   "--out", str(out), "-c", "synthetic-users=40 "
                                   "synthetic-items=60 synthetic-interactions=12"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["node-0000", "node-0001", "node-0002",
                                                      INDEX]
    sizes = [len(load_shard(f).users) for f in sorted(out.glob("node-*"))]
    assert sizes == [15, 15, 10]
