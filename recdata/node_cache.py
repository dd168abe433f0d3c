"""The node data a process keeps between messages, bounded in bytes.

A simulation runs every node's messages on a few Ray actors, each serving node after node; a
deployed node serves only its own. Each process keeps the node data it builds (the shards of
:func:`florec.recdata.shard.shard_of_node`, the buckets of :mod:`florec.client.app`, the
sequences of :func:`florec.client.seq_node.node_sequences`) in one
least-recently-used :class:`NodeCache` bounded in bytes (``FLOREC_NODE_CACHE_MB``, default
:data:`DEFAULT_CACHE_MB` MiB), so an actor's memory does not grow with the number of nodes it has
served: an evicted entry is rebuilt from the run's split (cut again in memory, or read again
from a node's shard folder). The run's split itself
(:func:`florec.recdata.shard.shards_in_memory`) is one per run and process, not per node.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

from florec.recdata.errors import ConfigError

#: the byte budget of a process's :class:`NodeCache`, in MiB
CACHE_MB_ENV = "FLOREC_NODE_CACHE_MB"
#: holds about 37 ML-1M nodes of 100 users, each with its shard, bucket and sequences
#: (0.84 MiB on average over the 61 nodes; measured with ``data_nbytes``, see docs/scale.md)
DEFAULT_CACHE_MB = 32.0
T = TypeVar("T")


def data_nbytes(obj: Any) -> int:
    """Bytes of the arrays and strings that ``obj`` holds (numpy, sparse, containers, dataclasses).

    The size a :class:`NodeCache` charges for an entry: every numpy array (a memory-mapped one
    counts its mapped length), the ``data``/``indices``/``indptr`` of a sparse matrix, the
    characters of strings, recursively through dicts, lists, tuples and dataclass fields.
    Python object overheads are not counted.
    """
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (str, bytes)):
        return len(obj)
    if hasattr(obj, "indptr") and hasattr(obj, "indices") and hasattr(obj, "data"):
        return int(obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes)
    if isinstance(obj, dict):
        return sum(data_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(len(v) if type(v) is str else data_nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(data_nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


class NodeCache:
    """A least-recently-used cache of node data, bounded in bytes (:func:`data_nbytes`).

    The newest entry is always kept, even when it alone exceeds the budget (a deployed node's
    one large shard is still built once per process); older entries are evicted, least recently
    used first, until the entries fit in ``max_bytes``. The entries read while an entry was
    made (a bucket's shard, the shard of a node's sequences) are kept beside it when it is
    cached, so making a bucket never evicts the shard it was just cut from. Entries are
    charged their size at the time of each eviction, not when they were made, so node data
    that grows or shrinks while cached (a split's CSR matrices built later, or dropped) is
    counted as it is now.

    Parameters
    ----------
    max_bytes : int
        The budget; 0 keeps only the newest entry.

    Raises
    ------
    ConfigError
        ``max_bytes`` is negative.

    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ConfigError(f"the node cache budget is {max_bytes} bytes; set "
                              f"{CACHE_MB_ENV} to a size in MiB >= 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._making = threading.local()  # per thread: the keys each pending make() read
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes the entries hold now (:func:`data_nbytes` of each, measured on every call)."""
        with self._lock:
            return sum(data_nbytes(v) for v in self._entries.values())

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The entry ``key``, made by ``make()`` (and cached) when it is not held.

        The entries that ``make()`` reads from this cache are not evicted to make room for
        ``key`` (they are evicted later, least recently used first, like any other).
        """
        pending: list[set] = self._making.__dict__.setdefault("stack", [])
        if pending:
            pending[-1].add(key)  # the enclosing make() read this entry
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        pending.append(set())
        try:
            value = make()  # outside the lock: making may fill the cache itself (a shard)
        finally:
            kept = pending.pop() | {key}
            if pending:
                pending[-1] |= kept
        with self._lock:
            self.misses += 1
            self._entries.pop(key, None)
            self._entries[key] = value
            sizes = {k: data_nbytes(v) for k, v in self._entries.items()}  # oldest first
            total = sum(sizes.values())
            for old, size in sizes.items():
                if total <= self.max_bytes:
                    break
                if old not in kept:
                    del self._entries[old]
                    total -= size
        return value

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()


@functools.lru_cache(maxsize=1)
def node_cache() -> NodeCache:
    """The node cache of this process, sized by ``$FLOREC_NODE_CACHE_MB`` (default 32 MiB).

    Raises
    ------
    ConfigError
        ``FLOREC_NODE_CACHE_MB`` is not a number >= 0.

    """
    raw = os.environ.get(CACHE_MB_ENV, "") or str(DEFAULT_CACHE_MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise ConfigError(f"{CACHE_MB_ENV}={raw!r} is not a size in MiB; set it to a number "
                          f">= 0 (default {DEFAULT_CACHE_MB:g})")
    return NodeCache(int(mb * 2**20))
