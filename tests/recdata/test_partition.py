import numpy as np
import pytest

from florec.client.trainers.bucket import Bucket
from florec.recdata.errors import ConfigError
from florec.recdata.partition import node_clients, node_clients_of, num_buckets, partition_users
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic


@pytest.mark.parametrize("kw", [{"num_nodes": 7}, {"users_per_node": 10}, {"users_per_node": 1}])
@pytest.mark.parametrize("mode", ["contiguous", "random"])
def test_every_user_lands_in_exactly_one_bucket(kw, mode):
    buckets = partition_users(95, mode=mode, seed=2, **kw)
    assert len(buckets) == num_buckets(95, **kw)
    allusers = np.concatenate(buckets)
    assert sorted(allusers.tolist()) == list(range(95))


def test_random_partition_is_seeded():
    a = partition_users(50, num_nodes=5, mode="random", seed=1)
    b = partition_users(50, num_nodes=5, mode="random", seed=1)
    c = partition_users(50, num_nodes=5, mode="random", seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_contiguous_buckets_hold_consecutive_users():
    buckets = partition_users(10, users_per_node=4)
    assert [b.tolist() for b in buckets] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_every_training_interaction_is_in_exactly_one_bucket():
    split = make_split(generate_synthetic(n_users=60, n_items=40, seed=0), "loo", seed=0)
    buckets = [Bucket.from_split(split, u) for u in partition_users(60, num_nodes=7)]
    assert sum(b.train.nnz for b in buckets) == split.matrix("train").nnz
    rows = np.concatenate([b.users for b in buckets])
    assert len(np.unique(rows)) == 60


def test_more_nodes_than_users_is_a_config_error():
    with pytest.raises(ConfigError, match="num-nodes=20 exceeds the 10 users"):
        partition_users(10, num_nodes=20)


def test_floor_partition_gives_the_remainder_to_the_last_bucket():
    buckets = partition_users(943, num_nodes=100, mode="floor")
    assert [len(b) for b in buckets] == [9] * 99 + [52]
    assert np.concatenate(buckets).tolist() == list(range(943))
    assert buckets[1].tolist() == list(range(9, 18)) and buckets[-1][0] == 891


@pytest.mark.parametrize("n_users, k", [(10, 1), (10, 3), (10, 10), (6040, 100), (99, 7)])
def test_floor_partition_sizes_follow_fedcia_rule(n_users, k):
    sizes = [len(b) for b in partition_users(n_users, num_nodes=k, mode="floor")]
    assert sizes == [n_users // k] * (k - 1) + [n_users - (k - 1) * (n_users // k)]


def test_floor_partition_with_users_per_node_is_a_config_error():
    with pytest.raises(ConfigError, match="partition 'floor'.*users-per-node=0"):
        partition_users(100, num_nodes=10, users_per_node=5, mode="floor")


def test_unknown_partition_names_floor_among_the_choices():
    with pytest.raises(ConfigError, match="contiguous, random, floor"):
        partition_users(10, num_nodes=2, mode="round-robin")


def test_a_bucket_subset_keeps_the_rows_of_the_chosen_users():
    split = make_split(generate_synthetic(n_users=30, n_items=40, seed=0), "loo", seed=0)
    bucket = Bucket.from_split(split, np.arange(10, 20))
    sub = bucket.subset(np.array([1, 4]))
    assert sub.users.tolist() == [11, 14] and sub.population == bucket.population == 30
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(sub, part).toarray(),
                                      split.matrix(part)[[11, 14]].toarray())


@pytest.mark.parametrize("keys", [
    {"num-nodes": 7, "partition": "contiguous"},
    {"num-nodes": 5, "partition": "random", "split-seed": 3},
    {"num-nodes": 4, "clients-per-node": 3, "partition": "random", "split-seed": 1},
    {"num-nodes": 10, "clients-per-node": 10, "partition": "floor"},
    {"users-per-node": 9, "partition": "random", "split-seed": 2},
])
def test_node_clients_of_cuts_with_the_runs_partition_keys(keys):
    cfg = parse_run_config(keys)
    got = node_clients_of(cfg, 943)
    want = node_clients(943, num_nodes=cfg.num_nodes, users_per_node=cfg.users_per_node,
                        clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                        seed=cfg.split_seed)
    assert [len(node) for node in got] == [len(node) for node in want]
    assert len(got[0]) == cfg.clients_per_node
    for a, b in zip(got, want, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_node_clients_of_follows_the_split_seed_not_the_training_seed():
    a = node_clients_of(parse_run_config({"num-nodes": 5, "partition": "random", "seed": 1}), 50)
    b = node_clients_of(parse_run_config({"num-nodes": 5, "partition": "random", "seed": 2}), 50)
    c = node_clients_of(parse_run_config({"num-nodes": 5, "partition": "random",
                                          "split-seed": 2}), 50)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
