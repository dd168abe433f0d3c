"""A simulation process serves node after node: its node data stays within the cache's budget."""

import numpy as np
from flwr.app import Context, RecordDict

from florec.client import app
from florec.recdata import node_cache as nc

CFG = {"dataset": "synthetic", "synthetic-users": 240, "synthetic-items": 80,
       "synthetic-interactions": 10, "num-nodes": 40}


def context(pid: int) -> Context:
    return Context(run_id=1, node_id=pid + 1, state=RecordDict(), run_config=CFG,
                   node_config={"partition-id": pid, "num-partitions": CFG["num-nodes"]})


def same(a, b) -> bool:
    return all((getattr(a, p) != getattr(b, p)).nnz == 0 for p in ("train", "valid", "test"))


def test_the_node_cache_stays_bounded_after_serving_many_buckets(monkeypatch):
    nc.node_cache.cache_clear()
    try:
        first = app.node_setup(context(0))[1]
        one = nc.data_nbytes(first) + nc.data_nbytes(app.shard_of_node(
            app.parse_run_config(CFG), context(0).node_config))
        monkeypatch.setenv(nc.CACHE_MB_ENV, str(4 * one / 2**20))  # about four nodes' data
        nc.node_cache.cache_clear()
        cache = nc.node_cache()
        sizes = []
        for _ in range(2):  # two rounds over every node, as a Ray actor serves them
            for pid in range(CFG["num-nodes"]):
                cfg, bucket, got = app.node_setup(context(pid))
                assert got == pid and len(bucket.users) == 6
                sizes.append((cache.nbytes, len(cache)))
        assert max(n for n, _ in sizes) <= cache.max_bytes
        assert max(k for _, k in sizes) <= 12  # a few nodes' shards and buckets, not all 80
        again = app.node_setup(context(0))[1]  # evicted long ago: rebuilt, equal to the first
        assert again is not first and same(again, first)
        assert np.array_equal(again.users, first.users)
        hits = cache.misses
        assert app.node_setup(context(0))[1] is again and cache.misses == hits  # kept
    finally:
        nc.node_cache.cache_clear()


def test_sequential_nodes_keep_their_sequences_in_the_bounded_cache(monkeypatch):
    from florec.client import seq_node

    seq_cfg = CFG | {"model": "sasrec", "max-seq-len": 8}
    cfg = app.parse_run_config(seq_cfg)

    def ctx(pid: int) -> Context:
        return Context(run_id=1, node_id=pid + 1, state=RecordDict(), run_config=seq_cfg,
                       node_config={"partition-id": str(pid), "num-partitions": 40})

    nc.node_cache.cache_clear()
    try:
        first = seq_node.node_sequences(ctx(0), cfg)
        one = nc.data_nbytes(app.node_setup(ctx(0))[1]) + nc.data_nbytes(
            first) + nc.data_nbytes(app.shard_of_node(cfg, ctx(0).node_config))
        monkeypatch.setenv(nc.CACHE_MB_ENV, str(4 * one / 2**20))  # about four nodes' data
        nc.node_cache.cache_clear()
        cache = nc.node_cache()
        held = []
        for _ in range(2):  # a Ray actor serving every node's train message, twice
            for pid in range(CFG["num-nodes"]):
                bucket = app.node_setup(ctx(pid))[1]
                seqs = seq_node.node_sequences(ctx(pid), cfg)
                assert seqs.n_users == 240 and (seqs.train_lengths(bucket.users) > 0).all()
                held.append((cache.nbytes, len(cache)))
        assert max(n for n, _ in held) <= cache.max_bytes
        assert max(k for _, k in held) <= 16  # a few nodes' entries, not all 120
        keys = [k[0] for k in cache._entries]
        assert set(keys) == {"shard", "bucket", "sequences"}
        again = seq_node.node_sequences(ctx(0), cfg)  # evicted long ago: rebuilt, equal
        assert again is not first
        for field in ("train_ptr", "train_tokens", "seen_ptr", "seen_tokens"):
            assert np.array_equal(getattr(again, field), getattr(first, field)), field
        misses = cache.misses  # the int and str spellings of a partition id are one node
        same_node = Context(run_id=1, node_id=1, state=RecordDict(), run_config=seq_cfg,
                            node_config={"partition-id": 0, "num-partitions": "40"})
        assert seq_node.node_sequences(same_node, cfg) is again and cache.misses == misses
    finally:
        nc.node_cache.cache_clear()


def test_a_bucket_build_keeps_its_shard_even_when_both_exceed_the_budget(monkeypatch):
    monkeypatch.setenv(nc.CACHE_MB_ENV, "0")
    nc.node_cache.cache_clear()
    try:
        cache = nc.node_cache()
        cfg, _, _ = app.node_setup(context(3))  # the bucket and the shard it was cut from
        assert [k[0] for k in cache._entries] == ["shard", "bucket"]
        assert cache.nbytes == sum(nc.data_nbytes(v) for v in cache._entries.values())
        misses = cache.misses
        shard = app.shard_of_node(cfg, context(3).node_config)  # query.partition asks next
        assert cache.misses == misses and shard.partition_id == 3  # not read again
        assert not shard.split._csr  # the bucket build dropped the shard's CSR matrices
        app.node_setup(context(4))  # the next node's build evicts node 3's entries
        assert [k[0] for k in cache._entries] == ["shard", "bucket"]
        assert {k[2] for k in cache._entries} == {4}
    finally:
        nc.node_cache.cache_clear()
