"""Node shards: the only interaction data a node holds, on disk or cut in memory.

``florec data shard`` (:func:`write_shards`) cuts a run's split into one folder per node. A
shard holds only its users' rows of the train, valid and test parts as RecBole atomic files
(``<name>.{train,valid,test}.inter``; user and item ids stay the split's global internal ids,
so a sharded run is the unsharded run), its users' id map (``<name>.user.map``), the public
item catalogue (``<name>.item.map``) and item text (``item_text.json``, where the dataset has
text), and ``shard.json``: what it was cut from, the clients it hosts and the sha256 of every
file (checked on load, :func:`load_shard`).

A node reads its shard through :func:`node_shard`: its ``data-dir`` holds a ``shard.json``, or,
in simulation, the node builds the split and cuts its own shard in memory (:func:`cut_shard`);
both give the same :class:`NodeShard`. A process marked ``FLOREC_NO_DATA=1`` (the ServerApp of
a deployment, or every process of a sharded one) refuses to open a dataset or split at all
(:func:`refuse_data`), so a server that touched interaction data would fail, not leak.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.checksums import sha256_file, verify_files
from florec.recdata.errors import ConfigError, DataError
from florec.recdata.splits import HEADER, PARTS, Split, read_split

MANIFEST = "shard.json"
INDEX = "shards.json"
TEXT = "item_text.json"
FORMAT = 1
#: the run-config keys that decide what a shard holds (checked against a node's run config)
SHARD_KEYS = ("dataset", "split", "split-seed", "min-rating", "partition", "num-nodes",
              "users-per-node", "clients-per-node", "synthetic-users", "synthetic-items",
              "synthetic-interactions")
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


def shard_facts(cfg: Any) -> dict[str, Any]:
    """The values of :data:`SHARD_KEYS` in a run config that decide a shard's content.

    ``num-nodes`` is 0 when ``users-per-node`` sets the partition, and the synthetic generator
    keys are None for other datasets.
    """
    flat = cfg.to_flower()
    facts = {k: flat[k] for k in SHARD_KEYS}
    if facts["users-per-node"] > 0:
        facts["num-nodes"] = 0
    if facts["dataset"] != "synthetic":
        facts.update({k: None for k in SHARD_KEYS if k.startswith("synthetic-")})
    return facts


def check_shard(meta: dict[str, Any], cfg: Any, folder: Path) -> None:
    """Fail with one line if a shard was cut for another split or partition than ``cfg``."""
    want, have = shard_facts(cfg), meta["cut-from"]
    diff = [k for k in SHARD_KEYS if want[k] != have[k]]
    if diff:
        cut = " ".join(f"{k}={have[k]!r}" for k in diff)
        run = " ".join(f"{k}={want[k]!r}" for k in diff)
        raise ConfigError(f"the shard in {folder} was cut with {cut} but the run has {run}; "
                          f"run with -c \"{cut}\" or cut new shards with florec data shard")


def load_shard(folder: str | Path, cfg: Any = None) -> NodeShard:
    """Read (and sha256-check) the shard in ``folder``; with ``cfg``, check it fits the run.

    Raises
    ------
    DataError
        ``shard.json`` is missing or of another format, or a file fails its checksum.
    ConfigError
        The shard was cut for another split or partition than ``cfg``.

    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} holds no {MANIFEST}; point the node's data-dir at one "
                        "folder written by florec data shard")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT}; cut the "
                        "shards again with this version of florec data shard")
    verify_files(folder, meta["files"], fix=f"cut the shards again (florec data shard); "
                 f"{folder} was changed after it was written")
    if cfg is not None:
        check_shard(meta, cfg, folder)
    local = read_split(folder, meta["name"])
    split = Split(parts=local.parts, n_users=int(meta["n_users"]), n_items=int(meta["n_items"]))
    texts = json.loads((folder / TEXT).read_text()) if TEXT in meta["files"] else None
    return NodeShard(split, [np.asarray(c, dtype=np.int64) for c in meta["clients"]],
                     int(meta["partition_id"]), int(meta["num_partitions"]), meta["notes"],
                     texts)


def _map_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[1:]


def write_shard(shard: NodeShard, folder: Path, name: str, split_path: Path,
                cut_from: dict[str, Any]) -> None:
    """Write one shard (atomic files, maps, item text, manifest with sha256s) into ``folder``."""
    folder.mkdir(parents=True)
    for part in PARTS:
        user, item, time = shard.split.parts[part]
        np.savetxt(folder / f"{name}.{part}.inter",
                   np.column_stack([user, item, time]).astype(object),
                   fmt=["%d", "%d", "%.6f"], delimiter="\t", header=HEADER, comments="")
    users = _map_lines(split_path / f"{name}.user.map")
    (folder / f"{name}.user.map").write_text(
        "internal\traw\n" + "".join(f"{users[u]}\n" for u in shard.users.tolist()))
    shutil.copy2(split_path / f"{name}.item.map", folder / f"{name}.item.map")
    texts = shard.texts if shard.texts is not None or shard.text_source is None \
        else catalogue_texts(*shard.text_source)
    if texts is not None:
        (folder / TEXT).write_text(json.dumps(texts, ensure_ascii=False))
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir())}
    meta = {"format": FORMAT, "name": name, "partition_id": shard.partition_id,
            "num_partitions": shard.num_partitions, "n_users": shard.split.n_users,
            "n_items": shard.split.n_items, "clients": [c.tolist() for c in shard.clients],
            "rows": {p: len(shard.split.parts[p][0]) for p in PARTS}, "cut-from": cut_from,
            "notes": shard.notes, "files": files}
    (folder / MANIFEST).write_text(json.dumps(meta) + "\n")


def shard_dir(out: Path, partition_id: int) -> Path:
    """The folder of node ``partition_id`` under a ``florec data shard`` output folder."""
    return Path(out) / f"node-{partition_id:04d}"


@functools.lru_cache(maxsize=2)
def _partitioned(config_json: str, data_dir: str) -> tuple[UserRows, list, Path, dict]:
    """The run's split, grouped by user, its buckets, its folder and its data notes."""
    from florec.recdata.partition import node_clients
    from florec.recdata.recbole_io import data_notes
    from florec.recdata.runconfig import RunConfig
    from florec.recdata.store import get_split

    cfg = RunConfig.model_validate(json.loads(config_json))
    split, path = get_split(cfg.dataset, cfg.split, cfg.split_seed, data_dir or cfg.data_dir,
                            cfg.min_rating, cfg.synthetic_params())
    buckets = node_clients(split.n_users, num_nodes=cfg.num_nodes,
                           users_per_node=cfg.users_per_node,
                           clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                           seed=cfg.split_seed)
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
    if data_dir and (Path(data_dir) / MANIFEST).is_file():
        shard = load_shard(data_dir, cfg)
        if shard.partition_id != partition_id:
            raise ConfigError(f"the shard in {data_dir} is partition {shard.partition_id} but "
                              f"this node has partition-id {partition_id}; give this node the "
                              f"folder {shard_dir(Path('<shards>'), partition_id)}")
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


@functools.lru_cache(maxsize=16384)  # a simulation process serves many partitions
def _cached_shard(config_json: str, partition_id: int, num_partitions: int, data_dir: str
                  ) -> NodeShard:
    from florec.recdata.runconfig import RunConfig

    cfg = RunConfig.model_validate(json.loads(config_json))
    return node_shard(cfg, partition_id, num_partitions, data_dir)


def shard_of_node(cfg: Any, node_config: dict[str, Any]) -> NodeShard:
    """The shard of the node with this Flower node config (read or cut once per process).

    ``node_config`` holds ``partition-id`` and optionally ``num-partitions`` and ``data-dir``
    (see :func:`node_shard`).
    """
    return _cached_shard(json.dumps(cfg.to_flower(), sort_keys=True),
                         int(node_config["partition-id"]),
                         int(node_config.get("num-partitions", -1)),
                         str(node_config.get("data-dir", "")))


def write_shards(cfg: Any, out: Path, data_dir: str = "") -> list[Path]:
    """Cut the split of ``cfg`` into one shard folder per node under ``out`` (atomically).

    Returns
    -------
    list of Path
        The shard folders, by partition id.

    Raises
    ------
    ConfigError
        ``out`` exists and is not empty.

    """
    from florec.recdata.recbole_io import storage_name

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new --out folder or delete it")
    buckets, cut = shards_in_memory(cfg, data_dir)
    _, _, path, _ = _partitioned(json.dumps(cfg.to_flower(), sort_keys=True), data_dir)
    name, facts = storage_name(cfg.dataset), shard_facts(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        text = cut(0).item_texts() if buckets else None
    except DataError:
        text = None
    try:
        for pid in range(len(buckets)):
            shard = cut(pid)
            shard.texts, shard.text_source = text, None
            write_shard(shard, shard_dir(tmp, pid), name, path, facts)
        index = {"format": FORMAT, "cut-from": facts, "num_partitions": len(buckets),
                 "split": str(path), "nodes": [shard_dir(Path(""), p).name
                                               for p in range(len(buckets))]}
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [shard_dir(out, p) for p in range(len(buckets))]


def check_shards(out: Path, cfg: Any) -> int:
    """The number of shards in a ``florec data shard`` folder cut for ``cfg``'s split.

    Raises
    ------
    DataError
        ``out`` holds no ``shards.json``.
    ConfigError
        The shards were cut for another split or partition (:func:`check_shard`).

    """
    index = Path(out) / INDEX
    if not index.is_file():
        raise DataError(f"{out} holds no {INDEX}; give a folder written by florec data shard")
    meta = json.loads(index.read_text())
    check_shard(meta, cfg, Path(out))
    return int(meta["num_partitions"])
