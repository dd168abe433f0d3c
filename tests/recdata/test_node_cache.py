"""The byte-bounded node cache: LRU by bytes, the newest entry always kept, sizes of node data."""

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp

from florec.recdata import node_cache as nc
from florec.recdata.errors import ConfigError


def array(kib: int) -> np.ndarray:
    return np.zeros(kib * 1024, dtype=np.uint8)


def test_data_nbytes_sums_arrays_sparse_strings_and_dataclass_fields():
    @dataclass
    class Holder:
        a: np.ndarray
        m: sp.csr_matrix
        parts: dict
        name: str

    m = sp.random(5, 7, density=0.4, format="csr", dtype=np.float32, random_state=0)
    h = Holder(np.zeros(10, np.int64), m, {"x": (np.zeros(3, np.float64), [np.zeros(2, np.int32)])},
               "abc")
    expected = 80 + (m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) + 24 + 8 + 3
    assert nc.data_nbytes(h) == expected
    assert nc.data_nbytes(None) == 0 and nc.data_nbytes(3) == 0


def test_the_cache_evicts_least_recently_used_entries_beyond_its_byte_budget():
    cache = nc.NodeCache(max_bytes=3 * 1024)
    made = []

    def make(key: str, kib: int = 1):
        made.append(key)
        return array(kib)

    for key in "abc":
        cache.get(key, lambda k=key: make(k))
    assert len(cache) == 3 and cache.nbytes == 3 * 1024
    cache.get("a", lambda: make("a?"))  # a hit: "a" becomes the most recent
    cache.get("d", lambda: make("d"))  # over budget: "b", the least recently used, goes
    assert made == ["a", "b", "c", "d"]
    assert cache.nbytes == 3 * 1024 and len(cache) == 3
    cache.get("b", lambda: make("b"))  # rebuilt once evicted, "c" goes
    cache.get("a", lambda: make("a!"))
    assert made == ["a", "b", "c", "d", "b"] and cache.misses == 5


def test_the_newest_entry_is_kept_even_when_it_alone_exceeds_the_budget():
    cache = nc.NodeCache(max_bytes=1024)
    cache.get("small", lambda: array(1))
    big = cache.get("big", lambda: array(4))
    assert len(cache) == 1 and cache.nbytes == 4 * 1024
    assert cache.get("big", lambda: pytest.fail("the newest entry was dropped")) is big
    zero = nc.NodeCache(max_bytes=0)
    zero.get("x", lambda: array(1))
    zero.get("y", lambda: array(1))
    assert len(zero) == 1 and zero.nbytes == 1024


def test_the_budget_comes_from_the_environment_and_bad_values_are_one_line_errors(monkeypatch):
    nc.node_cache.cache_clear()
    try:
        monkeypatch.setenv(nc.CACHE_MB_ENV, "0.5")
        assert nc.node_cache().max_bytes == 512 * 1024
        nc.node_cache.cache_clear()
        monkeypatch.delenv(nc.CACHE_MB_ENV)
        assert nc.node_cache().max_bytes == int(nc.DEFAULT_CACHE_MB * 2**20)
        for bad in ("lots", "-1", "nan"):
            nc.node_cache.cache_clear()
            monkeypatch.setenv(nc.CACHE_MB_ENV, bad)
            with pytest.raises(ConfigError, match=nc.CACHE_MB_ENV) as err:
                nc.node_cache()
            assert "\n" not in str(err.value)
    finally:
        nc.node_cache.cache_clear()


def test_entries_are_charged_their_current_size_when_they_grow_or_shrink_after_caching():
    cache = nc.NodeCache(max_bytes=3 * 1024)
    grows = cache.get("grows", dict)  # cached empty, filled later (a split's CSR cache)
    cache.get("b", lambda: array(1))
    assert cache.nbytes == 1024
    grows["csr"] = array(2)
    assert cache.nbytes == 3 * 1024  # measured now, not when "grows" was made
    cache.get("c", lambda: array(1))  # 4 KiB held: the least recently used, "grows", goes
    assert len(cache) == 2 and cache.nbytes == 2 * 1024
    assert cache.get("grows", dict) == {}  # rebuilt
    shrinks = cache.get("shrinks", lambda: {"csr": array(3)})  # 5 KiB: "b" and "c" go
    assert len(cache) == 2 and cache.nbytes == 3 * 1024
    shrinks.clear()  # dropped after caching (the bucket build clears the shard's CSRs)
    assert cache.nbytes == 0
    cache.get("d", lambda: array(2))
    cache.get("e", lambda: array(1))  # 3 KiB: nothing goes, the empty entries cost nothing
    assert len(cache) == 4 and cache.nbytes == 3 * 1024


def test_making_an_entry_never_evicts_the_entries_it_was_made_from():
    cache = nc.NodeCache(max_bytes=1024)
    made = []

    def shard(name: str) -> np.ndarray:
        made.append(name)
        return array(1)

    def bucket(name: str) -> np.ndarray:  # reads its shard from the cache, as the ClientApp does
        return cache.get(("shard", name), lambda: shard(name)) + 0

    cache.get(("bucket", "n0"), lambda: bucket("n0"))  # 2 KiB > 1 KiB: both kept all the same
    assert len(cache) == 2 and cache.nbytes == 2 * 1024
    cache.get(("shard", "n0"), lambda: pytest.fail("the bucket's build evicted its shard"))
    outer = cache.get("outer", lambda: cache.get(("bucket", "n1"), lambda: bucket("n1")))
    assert outer is not None and made == ["n0", "n1"]  # a nested build keeps its whole chain
    assert set(cache._entries) == {"outer", ("bucket", "n1"), ("shard", "n1")}
    cache.get("next", lambda: array(1))  # then they are evicted like any other
    assert set(cache._entries) == {"next"} and cache.nbytes == 1024
