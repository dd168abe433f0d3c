"""The node-local store: round trip, spill to disk past the threshold, a small Context."""

import pickle

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from florec.client import node_store
from florec.client.node_store import META_KEY, open_store, snapshot_path
from florec.recdata.errors import DataError


def context(tmp_path, pid=0, state_dir=True):
    return Context(run_id=7, node_id=pid + 1, state=RecordDict(), run_config={},
                   node_config={"partition-id": pid,
                                **({"state-dir": str(tmp_path)} if state_dir else {})})


def emb(rows, seed=0):
    return {"user_emb": np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)}


pytestmark = pytest.mark.usefixtures("fresh_node_store")


def test_a_small_store_lives_in_the_context_and_round_trips(tmp_path):
    ctx = context(tmp_path)
    store = open_store(ctx, spill_mb=1.0)
    assert store.get("private") is None
    store.put("private", emb(10))
    store.commit()
    assert not store.spilled and "private" in ctx.state.array_records
    again = open_store(ctx, spill_mb=1.0)
    np.testing.assert_array_equal(again.get("private")["user_emb"], emb(10)["user_emb"])
    assert not list(tmp_path.rglob("*.npz"))


def test_a_store_past_the_threshold_spills_and_the_context_stays_small(tmp_path):
    ctx = context(tmp_path)
    store = open_store(ctx, spill_mb=0.01)  # 10 KiB; 1000 x 16 float32 = 64 KB
    store.put("private", emb(1000))
    store.commit()
    assert store.spilled and "private" not in ctx.state.array_records
    assert len(pickle.dumps(ctx)) < 2000
    assert len(list((tmp_path / "live").rglob("*.npz"))) == 1
    node_store.clear_cache()  # another worker process: reads the file the pointer names
    again = open_store(ctx, spill_mb=0.01)
    np.testing.assert_array_equal(again.get("private")["user_emb"], emb(1000)["user_emb"])


def test_workers_alternating_on_one_partition_always_read_the_newest_version(tmp_path):
    ctx = context(tmp_path)
    for version in range(1, 5):
        node_store.clear_cache()  # each round on another Ray worker
        ctx = pickle.loads(pickle.dumps(ctx))  # the Context travels between processes
        store = open_store(ctx, spill_mb=0.0)
        if version > 1:
            np.testing.assert_array_equal(store.get("private")["user_emb"],
                                          emb(50, version - 1)["user_emb"])
        store.put("private", emb(50, version))
        store.commit()
        assert int(ctx.state.config_records[META_KEY]["version"]) == version
    assert len(list((tmp_path / "live").rglob("*.npz"))) == 2  # newest and previous


def test_a_cached_store_is_not_served_for_an_older_pointer(tmp_path):
    ctx = context(tmp_path)
    store = open_store(ctx, spill_mb=0.0)
    store.put("private", emb(20, 1))
    store.commit()
    old = pickle.loads(pickle.dumps(ctx))  # a Context saved before the next commit
    store.put("private", emb(20, 2))
    store.commit()
    np.testing.assert_array_equal(open_store(old, 0.0).get("private")["user_emb"],
                                  emb(20, 1)["user_emb"])


def test_a_store_that_shrinks_moves_back_into_the_context(tmp_path):
    ctx = context(tmp_path)
    store = open_store(ctx, spill_mb=0.01)
    store.put("big", emb(1000))
    store.commit()
    store.replace_all({"small": emb(3)})
    store.commit()
    assert not store.spilled and "small" in ctx.state.array_records
    assert "big" not in ctx.state.array_records and open_store(ctx, 0.01).names() == ["small"]


def test_snapshot_and_restore_bring_back_every_group(tmp_path):
    ctx = context(tmp_path)
    store = open_store(ctx, spill_mb=0.0)
    store.put("private-0-model", {"item_emb": np.ones((4, 2)), "user_emb": np.zeros((3, 2))})
    store.put("private-0-optimizer", {"0.step": np.array(3.0)})
    store.commit()
    path = snapshot_path(ctx, str(tmp_path / "ckpt"), 2)
    store.snapshot(path)
    store.put("private-0-model", {"item_emb": np.full((4, 2), 9.0)})
    store.commit()
    fresh = context(tmp_path)  # a resumed run: empty Context
    restored = open_store(fresh, spill_mb=0.0)
    restored.restore(path)
    back = open_store(fresh, spill_mb=0.0)
    assert back.names() == ["private-0-model", "private-0-optimizer"]
    np.testing.assert_array_equal(back.get("private-0-model")["item_emb"], np.ones((4, 2)))
    assert float(back.get("private-0-optimizer")["0.step"]) == 3.0


def test_snapshots_go_to_the_checkpoint_folder_unless_the_node_has_a_state_dir(tmp_path):
    shared = snapshot_path(context(tmp_path, 3, state_dir=False), "/run/ckpt", 5)
    assert str(shared) == "/run/ckpt/nodes/round-000005/part-3.npz"
    own = snapshot_path(context(tmp_path, 3), "/run/ckpt", 5)
    assert own.is_relative_to(tmp_path) and own.name == "part-3.npz"


def test_a_missing_snapshot_is_a_one_line_data_error(tmp_path):
    store = open_store(context(tmp_path), spill_mb=0.0)
    with pytest.raises(DataError) as err:
        store.restore(tmp_path / "nope.npz")
    assert "without resume" in str(err.value) and "\n" not in str(err.value)


def test_the_default_state_folder_is_under_the_runs_out_dir(tmp_path):
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), node_config={"partition-id": 0},
                  run_config={"out-dir": str(tmp_path / "out")})
    store = open_store(ctx, spill_mb=0.0)
    store.put("private", emb(5))
    store.commit()
    assert list((tmp_path / "out" / "node-state" / "live").rglob("v*.npz"))


def test_state_kept_in_the_context_outside_the_store_is_snapshotted_too(tmp_path):
    from florec.protocol.codec import from_record, to_record

    ctx = context(tmp_path)
    ctx.state["adam"] = to_record({"m": np.ones(3)})  # node code that bypasses the store
    store = open_store(ctx, spill_mb=0.0)
    store.put("private", emb(4))
    store.commit()
    path = tmp_path / "snap.npz"
    store.snapshot(path)
    fresh = context(tmp_path)
    open_store(fresh, spill_mb=0.0).restore(path)
    np.testing.assert_array_equal(from_record(fresh.state.array_records["adam"])["m"], np.ones(3))
    np.testing.assert_array_equal(open_store(fresh, 0.0).get("private")["user_emb"],
                                  emb(4)["user_emb"])
    assert open_store(fresh, 0.0).names() == ["private"]
