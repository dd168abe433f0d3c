"""Fair Sampling's item popularity by secure aggregation: exact totals, masked uploads, dropouts."""

import logging

import numpy as np
import pytest
from flwr.app import Array, MessageType

from florec.client import secagg_node
from florec.client.app import evaluate, setup, train
from florec.client.setup_node import local_counts
from florec.client.trainers.bucket import Bucket
from florec.protocol.codec import from_record
from florec.protocol.secure_sum import mask_vector, new_keypair, pair_seed
from florec.recdata.partition import node_clients
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.server.federation import setup_phase
from florec.server.secagg import SecAggTooFew
from florec.sim.local_grid import LocalGrid
from florec.strategies.fair import build_fair_strategy

SETUP = f"{MessageType.TRAIN}.setup"
CFG = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
       "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "mf-loss": "fs-point"}


def test_pair_seeds_agree_on_both_sides_and_differ_per_aggregation():
    (sk_a, pk_a), (sk_b, pk_b) = new_keypair(), new_keypair()
    assert pair_seed(sk_a, pk_b, b"x") == pair_seed(sk_b, pk_a, b"x")
    assert pair_seed(sk_a, pk_b, b"round=1") != pair_seed(sk_a, pk_b, b"round=2")
    m = mask_vector(pair_seed(sk_a, pk_b, b"x"), 1000)
    assert m.dtype == np.uint32 and len(np.unique(m)) > 990


def _setup_run(cfg_dict, fail=None):
    cfg = parse_run_config(cfg_dict)
    handlers = {MessageType.TRAIN: train, SETUP: setup, MessageType.EVALUATE: evaluate}
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, handlers=handlers, fail=fail)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    strategy, arrays = build_fair_strategy(cfg, split.n_items)
    return grid, split, strategy, setup_phase(grid, strategy, arrays, 30.0)


def _buckets(cfg_dict, split):
    cfg = parse_run_config(cfg_dict)
    parts = node_clients(split.n_users, num_nodes=cfg.num_nodes, users_per_node=0,
                         clients_per_node=1, mode=cfg.partition, seed=cfg.split_seed)
    return [Bucket.from_split(split, p) for p in parts]


def test_setup_stages_give_the_server_the_exact_popularity_and_user_count():
    grid, split, strategy, arrays = _setup_run(CFG)
    state = from_record(arrays)
    pop = np.asarray(split.matrix("train").sum(0)).ravel()
    np.testing.assert_array_equal(state["item_pop"], pop)
    assert int(state["n_users"][0]) == split.n_users
    masked = [from_record(m.content.array_records["arrays"])["masked"] for m in grid.received
              if "masked" in m.content.array_records.get("arrays", {})]
    assert len(masked) == 4
    for bucket, y in zip(_buckets(CFG, split), masked, strict=True):
        raw = local_counts(bucket)
        assert np.mean(y[: len(raw)].astype(np.int64) == raw) < 0.05  # uniform, not the counts


def test_a_node_that_fails_to_unmask_after_its_vector_arrived_still_counts():
    calls = {"n": 0}

    def fail(pid, kind):  # partition 3 answers keys, share and mask, then fails to unmask
        if kind == SETUP and pid == 3:
            calls["n"] += 1
            return calls["n"] == 4
        return False

    grid, split, strategy, arrays = _setup_run(CFG, fail=fail)
    state = from_record(arrays)
    survivors = [b for pid, b in enumerate(_buckets(CFG, split)) if pid != 3]
    expected = sum(local_counts(b) for b in survivors)
    assert len(strategy.session.alive) == 4 and strategy.session.dropped == []
    # partition 3's masked vector arrived; 3 of 4 reveals reach the threshold (3): all four count
    np.testing.assert_array_equal(state["item_pop"],
                                  np.asarray(split.matrix("train").sum(0)).ravel())
    assert grid.pushed[SETUP] == 4 * 4  # keys, share, mask, unmask: no restart
    assert int(state["n_users"][0]) > expected[-1]


def test_a_node_that_drops_after_sharing_is_left_out_without_a_restart():
    calls = {"n": 0}

    def fail(pid, kind):  # partition 3 answers keys and share, then fails to mask
        if kind == SETUP and pid == 3:
            calls["n"] += 1
            return calls["n"] == 3
        return False

    grid, split, strategy, arrays = _setup_run(CFG, fail=fail)
    state = from_record(arrays)
    survivors = [b for pid, b in enumerate(_buckets(CFG, split)) if pid != 3]
    expected = sum(local_counts(b) for b in survivors)
    np.testing.assert_array_equal(state["item_pop"], expected[:-1])
    assert int(state["n_users"][0]) == expected[-1] < split.n_users
    assert len(strategy.session.dropped) == 1
    assert grid.pushed[SETUP] == 4 + 4 + 4 + 3  # one pass: the dropped node is not re-asked


def test_more_than_n_minus_t_dropouts_stop_the_setup_with_one_line_and_no_unmask_request():
    calls: dict[int, int] = {2: 0, 3: 0}

    def fail(pid, kind):  # partitions 2 and 3 answer keys and share, then fail to mask
        if kind == SETUP and pid in calls:
            calls[pid] += 1
            return calls[pid] == 3
        return False

    with pytest.raises(SecAggTooFew, match="2 masked vectors arrived, fewer than the "
                                           "threshold 3 of 4") as err:
        _setup_run(CFG, fail=fail)
    assert "\n" not in str(err.value)


def test_an_undecodable_masked_vector_drops_its_node_and_the_setup_sums_the_rest(monkeypatch,
                                                                                  caplog):
    handle, hit, pids = secagg_node.handle, [], []

    def truncate_one_mask(msg, context, *args, **kwargs):
        out = handle(msg, context, *args, **kwargs)
        if msg.content.config_records["config"]["stage"] != "mask" or hit:
            return out
        hit.append(int(msg.metadata.dst_node_id))
        pids.append(int(context.node_config["partition-id"]))
        whole = out.array_records["arrays"]["masked"]
        out.array_records["arrays"]["masked"] = Array(
            dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data[:-4])
        return out

    monkeypatch.setattr(secagg_node, "handle", truncate_one_mask)
    with caplog.at_level(logging.WARNING):
        grid, split, strategy, arrays = _setup_run(CFG)
    assert strategy.session.dropped == hit and len(strategy.session.alive) == 3
    expected = sum(local_counts(b) for p, b in enumerate(_buckets(CFG, split)) if p not in pids)
    np.testing.assert_array_equal(from_record(arrays)["item_pop"], expected[:-1])
    (line,) = [r.getMessage() for r in caplog.records if "skipping reply" in r.getMessage()]
    assert "secure sum stage 2: undecodable arrays" in line and "\n" not in line
