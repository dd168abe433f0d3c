"""Secure sum with pairwise X25519 masks: exact totals, masked uploads, dropout retry."""

import numpy as np
import pytest
from flwr.app import MessageType

from florec.client.app import evaluate, setup, train
from florec.client.setup_node import local_counts
from florec.protocol.codec import from_record
from florec.protocol.secure_sum import (
    attempt_info,
    mask_vector,
    masked_upload,
    new_keypair,
    pair_seed,
    unmask_sum,
)
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.sim.local_grid import LocalGrid
from florec.strategies.fair import build_fair_strategy

SETUP = f"{MessageType.TRAIN}.setup"


def test_pair_seeds_agree_on_both_sides_and_differ_per_attempt():
    (sk_a, pk_a), (sk_b, pk_b) = new_keypair(), new_keypair()
    assert pair_seed(sk_a, pk_b, b"x") == pair_seed(sk_b, pk_a, b"x")
    assert pair_seed(sk_a, pk_b, attempt_info(1, 5)) != pair_seed(sk_a, pk_b, attempt_info(2, 5))
    m = mask_vector(pair_seed(sk_a, pk_b, b"x"), 1000)
    assert m.dtype == np.uint32 and len(np.unique(m)) > 990


def test_secure_sum_equals_the_plain_sum_and_uploads_are_masked():
    rng = np.random.default_rng(0)
    ids = [4, 9, 2, 17, 5]
    keys = {i: new_keypair() for i in ids}
    values = {i: rng.integers(0, 1000, 50) for i in ids}
    info = attempt_info(1, 50)
    uploads = {i: masked_upload(values[i], i, keys[i][0],
                                {j: keys[j][1] for j in ids}, info) for i in ids}
    np.testing.assert_array_equal(unmask_sum(list(uploads.values())), sum(values.values()))
    for i in ids:
        assert np.mean(uploads[i].astype(np.int64) == values[i]) < 0.05
        assert uploads[i].max() > 2**30  # spread over the whole uint32 range
    partial = unmask_sum([uploads[i] for i in ids[:-1]])  # a missing node leaves noise
    assert not np.array_equal(partial, sum(values[i] for i in ids[:-1]))


def test_values_outside_uint32_are_refused():
    sk, _ = new_keypair()
    with pytest.raises(ValueError, match="2\\^32"):
        masked_upload(np.array([-1]), 1, sk, {}, b"x")


def _setup_run(cfg_dict, fail=None):
    cfg = parse_run_config(cfg_dict)
    handlers = {MessageType.TRAIN: train, SETUP: setup, MessageType.EVALUATE: evaluate}
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, handlers=handlers, fail=fail)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    strategy, arrays = build_fair_strategy(cfg, split.n_items)
    from florec.server.federation import setup_phase

    return grid, split, strategy, setup_phase(grid, strategy, arrays, 30.0)


CFG = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
       "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "mf-loss": "fs-point"}


def test_setup_stages_give_the_server_the_exact_popularity_and_user_count():
    grid, split, strategy, arrays = _setup_run(CFG)
    state = from_record(arrays)
    pop = np.asarray(split.matrix("train").sum(0)).ravel()
    np.testing.assert_array_equal(state["item_pop"], pop)
    assert int(state["n_users"][0]) == split.n_users
    masked = [from_record(m.content.array_records["arrays"])["masked"] for m in grid.received
              if "masked" in m.content.array_records.get("arrays", {})]
    assert len(masked) == 4
    raw = np.concatenate([np.asarray(split.matrix("train")[:10].sum(0)).ravel(), [10]])
    assert not any(np.array_equal(m.astype(np.int64), raw) for m in masked)


def test_a_node_that_drops_in_the_mask_stage_is_left_out_of_a_retried_sum():
    calls = {"n": 0}

    def fail(pid, kind):
        if kind == SETUP and pid == 3:
            calls["n"] += 1
            return calls["n"] == 2  # answers the keys stage, crashes in the first mask stage
        return False

    grid, split, strategy, arrays = _setup_run(CFG, fail=fail)
    state = from_record(arrays)
    train_m = split.matrix("train")
    survivors = [b for pid, b in enumerate(_buckets(CFG, split)) if pid != 3]
    expected = sum(local_counts(b) for b in survivors)
    np.testing.assert_array_equal(state["item_pop"], expected[:-1])
    assert int(state["n_users"][0]) == expected[-1] < train_m.shape[0]


def _buckets(cfg_dict, split):
    from florec.client.trainers.bucket import Bucket
    from florec.recdata.partition import node_clients

    cfg = parse_run_config(cfg_dict)
    parts = node_clients(split.n_users, num_nodes=cfg.num_nodes, users_per_node=0,
                         clients_per_node=1, mode=cfg.partition, seed=cfg.split_seed)
    return [Bucket.from_split(split, p) for p in parts]


def test_flower_sized_node_ids_travel_in_the_mask_stage():
    """Flower node ids are 64-bit unsigned: ids above 2^63 must reach the nodes unchanged."""
    from florec.strategies.fair import FairFedAvg

    strategy = FairFedAvg(n_items=3)
    ids = [2**63 + 5, 7, 2**64 - 1]
    strategy.public_keys = {i: new_keypair()[1] for i in ids}
    strategy.participants = sorted(ids)

    class Grid:
        def get_node_ids(self):
            return ids

    msgs = list(strategy.configure_setup(1, None, Grid()))
    sent = from_record(msgs[0].content.array_records["arrays"])
    assert [int(i) for i in sent["peer_ids"]] == sorted(ids)
    assert sorted(m.metadata.dst_node_id for m in msgs) == sorted(ids)
