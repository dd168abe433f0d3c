"""Node shards: the only interaction data a node holds, cut in memory or read from disk.

A node gets its data through :func:`shard_of_node`: if its ``data-dir`` holds a ``shard.json``
(written by ``florec data shard``, :mod:`florec.recdata.shard_files`) it reads that folder and
nothing else; in simulation it builds the run's split and cuts its own rows in memory
(:func:`shards_in_memory`). Both give the same :class:`NodeShard`: the node's users' rows of
train, valid and test with the split's global user and item ids and sizes, so a sharded run is
the unsharded run. A process marked ``FLOREC_NO_DATA=1`` (the server side of a deployment, and
nodes that have shards) refuses to open a dataset or split at all (:func:`refuse_data`), so a
server that touched interaction data would fail, not leak.

A process keeps the shards it built (and :mod:`florec.client.app` its buckets) in one
byte-bounded :func:`florec.recdata.node_cache.node_cache`, so a Ray actor that serves many nodes
holds a bounded amount of node data however many it has served.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.errors import ConfigError, DataError
from florec.recdata.node_cache import node_cache
from florec.recdata.splits import PARTS, Split

NO_DATA_ENV = "FLOREC_NO_DATA"


def refuse_data(what: str) -> None:
    """Raise if this process is marked as holding no interaction data (``FLOREC_NO_DATA=1``).

    Raises
    ------
    DataError
        When ``FLOREC_NO_DATA`` is set to a non-empty value other than ``0``.

    """
    if os.environ.get(NO_DATA_ENV, "0") not in ("", "0"):
        raise DataError(f"this process holds no interaction data ({NO_DATA_ENV}=1) but tried to "
                        f"open {what}; give the node a shard (node config data-dir=<shard>), "
                        "and let the server learn sizes from the nodes")


@dataclass
class NodeShard:
    """One node's data: its users' rows of every part, in the split's global id space.

    Attributes
    ----------
    split : Split
        Only this node's users' interactions; ``n_users`` and ``n_items`` are the whole
        split's, so ids (and user cohorts drawn from ``0..n_users-1``) are global.
    clients : list of np.ndarray
        Sorted user ids of each client the node hosts.
    partition_id, num_partitions : int
        This node's partition and how many there are.
    notes : dict
        Facts about the source data for ``results.json`` (:func:`recbole_io.data_notes`).
    texts : list of str, optional
        Public item text by internal item id (None: load lazily from ``text_source``).
    text_source : tuple, optional
        ``(dataset, data_dir, split_path, synthetic)`` to load the text from (in-memory shards).

    """

    split: Split
    clients: list[np.ndarray]
    partition_id: int
    num_partitions: int
    notes: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None
    text_source: tuple | None = field(default=None, repr=False)

    @property
    def users(self) -> np.ndarray:
        """Sorted ids of every user of the node."""
        return np.concatenate(self.clients) if self.clients else np.zeros(0, np.int64)

    def item_texts(self) -> list[str]:
        """Public item text by internal id (one line per item, as LLM prompts use it).

        Raises
        ------
        DataError
            The shard was cut from a dataset without item text.

        """
        if self.texts is None and self.text_source is not None:
            self.texts = catalogue_texts(*self.text_source)
        if self.texts is None:
            raise DataError("this node's shard holds no item text (its dataset has none); use "
                            "a dataset with item text (ml-100k, ml-1m, amazon-scientific)")
        return self.texts


def catalogue_texts(dataset: str, data_dir: str | None, split_path: Path,
                    synthetic: dict | None = None) -> list[str] | None:
    """One public text line per internal item id, or None if the dataset has no item text."""
    from florec.recdata.item_text import item_text_string, load_item_text, split_item_ids

    ids = split_item_ids(Path(split_path), dataset)
    try:
        texts = load_item_text(dataset, data_dir or None, ids,
                               synthetic=synthetic if dataset == "synthetic" else None)
    except DataError:
        return None
    return [item_text_string(t) for t in texts]


class UserRows:
    """Each part's rows grouped by user (stable: a user's rows keep their split order)."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.order, self.ptr = {}, {}
        for part in PARTS:
            user = split.parts[part][0]
            self.order[part] = np.argsort(user, kind="stable")
            counts = np.bincount(user, minlength=split.n_users)
            self.ptr[part] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def rows(self, part: str, users: np.ndarray) -> np.ndarray:
        """Row indices of ``users`` in ``part``, user by user."""
        ptr, order = self.ptr[part], self.order[part]
        return np.concatenate([order[ptr[u]:ptr[u + 1]] for u in users]
                              or [np.zeros(0, np.int64)])

    def part_of(self, users: np.ndarray) -> Split:
        """The split restricted to ``users`` (global ids and sizes kept)."""
        parts = {}
        for part in PARTS:
            rows = self.rows(part, users)
            parts[part] = tuple(a[rows] for a in self.split.parts[part])
        return Split(parts=parts, n_users=self.split.n_users, n_items=self.split.n_items)


def cut_shard(index: UserRows, clients: list[np.ndarray], partition_id: int,
              num_partitions: int, **extra: Any) -> NodeShard:
    """The shard of the node hosting ``clients`` (its users' rows only)."""
    clients = [np.asarray(c, dtype=np.int64) for c in clients]
    users = np.concatenate(clients) if clients else np.zeros(0, np.int64)
    return NodeShard(index.part_of(users), clients, partition_id, num_partitions, **extra)


@functools.lru_cache(maxsize=2)
def _partitioned(config_json: str, data_dir: str) -> tuple[UserRows, list, Path, dict]:
    """The run's split, grouped by user, its buckets, its folder and its data notes."""
    from florec.recdata.partition import node_clients_of
    from florec.recdata.recbole_io import data_notes
    from florec.recdata.runconfig import RunConfig
    from florec.recdata.store import get_split

    cfg = RunConfig.model_validate(json.loads(config_json))
    split, path = get_split(cfg.dataset, cfg.split, cfg.split_seed, data_dir or cfg.data_dir,
                            cfg.min_rating, cfg.synthetic_params())
    buckets = node_clients_of(cfg, split.n_users)
    return UserRows(split), buckets, path, data_notes(cfg)


def shards_in_memory(cfg: Any, data_dir: str = "") -> tuple[list[list[np.ndarray]], Any]:
    """The run's buckets and a function ``partition_id -> NodeShard`` (the split cut once)."""
    index, buckets, path, notes = _partitioned(json.dumps(cfg.to_flower(), sort_keys=True),
                                               data_dir)
    source = (cfg.dataset, data_dir or cfg.data_dir, path,
              cfg.synthetic_params() if cfg.dataset == "synthetic" else None)

    def cut(pid: int) -> NodeShard:
        return cut_shard(index, buckets[pid], pid, len(buckets), notes=notes,
                         text_source=source)

    return buckets, cut


def split_folder(cfg: Any, data_dir: str = "") -> Path:
    """The folder of the split :func:`shards_in_memory` cuts (its atomic files and id maps)."""
    return _partitioned(json.dumps(cfg.to_flower(), sort_keys=True), data_dir)[2]


def node_shard(cfg: Any, partition_id: int, num_partitions: int, data_dir: str) -> NodeShard:
    """A node's shard: read from ``data_dir`` if it holds one, else cut in memory.

    Parameters
    ----------
    cfg : RunConfig
        The run config (the shard must have been cut for its split and partition).
    partition_id : int
        The node's ``partition-id``.
    num_partitions : int
        The node's ``num-partitions`` (-1: not given).
    data_dir : str
        The node's ``data-dir``: a shard folder, or a data root (simulation).

    Raises
    ------
    ConfigError
        The node's partition id or count does not match the shard or the partition.

    """
    from florec.recdata import shard_files

    if data_dir and (Path(data_dir) / shard_files.MANIFEST).is_file():
        shard = shard_files.load_shard(data_dir, cfg)
        if shard.partition_id != partition_id:
            raise ConfigError(f"the shard in {data_dir} is partition {shard.partition_id} but "
                              f"this node has partition-id {partition_id}; give this node the "
                              f"folder {shard_files.shard_dir(Path('<shards>'), partition_id)}")
        _check_partition(partition_id, num_partitions, shard.num_partitions)
        return shard
    buckets, cut = shards_in_memory(cfg, data_dir)
    _check_partition(partition_id, num_partitions, len(buckets))
    return cut(partition_id)


def _check_partition(partition_id: int, num_partitions: int, count: int) -> None:
    if num_partitions >= 0 and num_partitions != count:
        raise ConfigError(
            f"{num_partitions} nodes were started but the partition has {count} buckets; "
            f"set --federation-config 'num-supernodes={count}' or -c 'num-nodes="
            f"{num_partitions}'")
    if not 0 <= partition_id < count:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{count - 1}; "
                          "check the node config of this SuperNode")


def _make_shard(config_json: str, partition_id: int, num_partitions: int, data_dir: str
                ) -> NodeShard:
    from florec.recdata.runconfig import RunConfig

    cfg = RunConfig.model_validate(json.loads(config_json))
    return node_shard(cfg, partition_id, num_partitions, data_dir)


def node_key(cfg: Any, node_config: Any) -> tuple[str, int, int, str]:
    """The run and node a node's cached data belongs to, normalised for a cache key.

    ``(run config as sorted JSON, partition-id, num-partitions or -1, data-dir or "")``: the
    same node gives the same key whether its node config holds ints or strings, and whether
    it omits the optional keys or sets them to their defaults.
    """
    return (json.dumps(cfg.to_flower(), sort_keys=True), int(node_config["partition-id"]),
            int(node_config.get("num-partitions", -1)), str(node_config.get("data-dir", "")))


def shard_of_node(cfg: Any, node_config: Any) -> NodeShard:
    """The shard of the node with this Flower node config (kept in the :func:`node_cache`).

    ``node_config`` holds ``partition-id`` and optionally ``num-partitions`` and ``data-dir``
    (see :func:`node_shard`).
    """
    key = node_key(cfg, node_config)
    return node_cache().get(("shard", *key), lambda: _make_shard(*key))
