"""Shard folders on disk: ``florec data shard`` writes them, a node reads one.

:func:`write_shards` cuts a run's split into ``OUT/node-NNNN`` folders, one per node. A folder
holds only its users' rows of train, valid and test as RecBole atomic files
(``<name>.{train,valid,test}.inter``, global internal ids), its users' id map
(``<name>.user.map``), the public item catalogue (``<name>.item.map``) and item text
(``item_text.json`` where the dataset has text), and ``shard.json``: what it was cut from, the
clients it hosts and the sha256 of every file. Beside each atomic file, ``<name>.<part>.npy``
holds the same rows as one structured array (``user``, ``item``, ``time``): a node memory-maps
these (:func:`load_shard`), so a deployed ClientApp, a new process per message, reads its shard
in milliseconds instead of parsing text. :func:`load_shard` checks the sha256 of every file and
that the shard was cut for the run's split and partition; shards without ``.npy`` files (written
before them) are read from the atomic files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.checksums import sha256_file, verify_files
from florec.recdata.errors import ConfigError, DataError
from florec.recdata.shard import NodeShard, catalogue_texts, shards_in_memory, split_folder
from florec.recdata.splits import HEADER, PARTS, Split, read_split

MANIFEST = "shard.json"
INDEX = "shards.json"
TEXT = "item_text.json"
FORMAT = 1
#: the dtype of a shard's ``<name>.<part>.npy`` rows (the columns of its atomic file)
ROWS_DTYPE = np.dtype([("user", "<i8"), ("item", "<i8"), ("time", "<f8")])
#: the run-config keys that decide what a shard holds (checked against a node's run config)
SHARD_KEYS = ("dataset", "split", "split-seed", "min-rating", "partition", "num-nodes",
              "users-per-node", "clients-per-node", "synthetic-users", "synthetic-items",
              "synthetic-interactions")


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
    name, files = meta["name"], meta["files"]
    fast = all(f"{name}.{part}.npy" in files for part in PARTS)
    text_rows = {f"{name}.{part}.inter" for part in PARTS}  # not read when the .npy rows are
    verify_files(folder, files, [f for f in files if not (fast and f in text_rows)],
                 fix=f"cut the shards again (florec data shard); {folder} was "
                 "changed after it was written")
    if cfg is not None:
        check_shard(meta, cfg, folder)
    if fast:  # copy-on-write maps: nothing is read until used, and a write stays in memory
        rows = {part: np.load(folder / f"{name}.{part}.npy", mmap_mode="c") for part in PARTS}
        parts = {part: (r["user"], r["item"], r["time"]) for part, r in rows.items()}
    else:
        parts = read_split(folder, name).parts
    split = Split(parts=parts, n_users=int(meta["n_users"]), n_items=int(meta["n_items"]))
    texts = json.loads((folder / TEXT).read_text()) if TEXT in files else None
    return NodeShard(split, [np.asarray(c, dtype=np.int64) for c in meta["clients"]],
                     int(meta["partition_id"]), int(meta["num_partitions"]), meta["notes"],
                     texts)


def rows_array(user: np.ndarray, item: np.ndarray, time: np.ndarray) -> np.ndarray:
    """One part's rows as a structured array of :data:`ROWS_DTYPE` (what ``.npy`` files hold)."""
    rows = np.empty(len(user), dtype=ROWS_DTYPE)
    rows["user"], rows["item"], rows["time"] = user, item, time
    return rows


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
        np.save(folder / f"{name}.{part}.npy", rows_array(user, item, time))
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
    path = split_folder(cfg, data_dir)
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
