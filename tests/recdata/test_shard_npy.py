"""Shards as memory-mapped ``.npy`` rows: the same data as the atomic files, sha256-checked."""

import json

import numpy as np
import pytest

from florec.recdata.errors import DataError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.shard_files import MANIFEST, ROWS_DTYPE, load_shard, write_shards
from florec.recdata.splits import PARTS, read_split

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "num-nodes": 2}


def test_a_written_shard_holds_npy_rows_equal_to_its_atomic_files(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[0]
    atomic = read_split(folder, "synthetic")
    files = json.loads((folder / MANIFEST).read_text())["files"]
    for part in PARTS:
        rows = np.load(folder / f"synthetic.{part}.npy")
        assert rows.dtype == ROWS_DTYPE and f"synthetic.{part}.npy" in files
        for col, want in zip(("user", "item", "time"), atomic.parts[part], strict=True):
            np.testing.assert_allclose(rows[col], want, atol=1e-6)


def test_a_shard_is_memory_mapped_and_writes_stay_in_memory(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[1]
    before = (folder / "synthetic.train.npy").read_bytes()
    user, item, _ = load_shard(folder, cfg).split.parts["train"]
    assert isinstance(user.base, np.memmap) and user.dtype == np.int64 and len(user) > 0
    item[0] = -1  # copy-on-write: a node may write to its arrays without changing its shard
    assert (folder / "synthetic.train.npy").read_bytes() == before
    assert load_shard(folder, cfg).split.parts["train"][1][0] >= 0


def test_a_shard_without_npy_files_is_read_from_its_atomic_files(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[0]
    fast = load_shard(folder, cfg)
    meta = json.loads((folder / MANIFEST).read_text())
    for part in PARTS:  # a shard written before the .npy files existed
        (folder / f"synthetic.{part}.npy").unlink()
        del meta["files"][f"synthetic.{part}.npy"]
    (folder / MANIFEST).write_text(json.dumps(meta))
    slow = load_shard(folder, cfg)
    assert not isinstance(slow.split.parts["train"][0].base, np.memmap)
    for part in PARTS:
        for a, b in zip(fast.split.parts[part], slow.split.parts[part], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_an_edited_npy_file_fails_its_sha256_check(tmp_path):
    cfg = parse_run_config(SMALL)
    folder = write_shards(cfg, tmp_path / "shards")[0]
    path = folder / "synthetic.valid.npy"
    rows = np.load(path)
    rows["item"][0] = (rows["item"][0] + 1) % 60
    np.save(path, rows)
    with pytest.raises(DataError, match="synthetic.valid.npy fails its sha256 check"):
        load_shard(folder, cfg)
