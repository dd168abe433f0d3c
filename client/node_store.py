"""A node-local store of private per-user state, kept out of Flower's Context when large.

Flower pickles a node's ``Context`` on every call, so large private state (FedAvg's user
embeddings, FedCIA's whole private models with their Adam states) must not live there. A
:class:`NodeStore` holds named groups of numpy arrays for one (run, partition):

- while the store's total size is at most ``store-spill-mb`` MiB, the groups live in the
  Context as ArrayRecords (one per group, under the group's name);
- past that, the groups are written to one ``.npz`` file per version under the node's state
  folder and the Context keeps only a small pointer (a ConfigRecord ``node-store`` with the
  file, a token and a version number).

A Ray simulation may run the same partition on different worker processes in different rounds;
the pointer travels with the Context and every process reads the version it names (disk is
shared in simulation), with a per-process cache checked against the version. The state folder
is the node config's ``state-dir`` if set (deployment: each SuperNode its own disk), else
``<out-dir>/node-state`` of the run config, else ``$FLOREC_CACHE_DIR/node-state``.

:meth:`NodeStore.snapshot` and :meth:`NodeStore.restore` write and read a whole store at a
checkpoint round (see :mod:`florec.server.checkpoint`).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context

from florec.protocol.codec import from_record, to_record
from florec.recdata.download import cache_root
from florec.recdata.errors import DataError

META_KEY = "node-store"
SEP = "|"
CTX = "ctx:"
#: bytes of spilled stores one process keeps in memory (least recently used go first)
CACHE_BYTES = 256 * 2**20
_CACHE: OrderedDict[tuple[str, int], tuple[int, dict[str, dict[str, np.ndarray]], int]] = \
    OrderedDict()

Groups = dict[str, dict[str, np.ndarray]]


def state_root(context: Context) -> Path:
    """The node's state folder (see the module docstring for the order of choices)."""
    configured = str(context.node_config.get("state-dir", "") or "")
    if configured:
        return Path(configured).expanduser()
    out_dir = str(context.run_config.get("out-dir", "") or "")
    return (Path(out_dir) if out_dir else cache_root()) / "node-state"


def snapshot_path(context: Context, checkpoint_dir: str, server_round: int) -> Path:
    """Where this node keeps its store snapshot of ``server_round`` of a checkpoint folder.

    With a ``state-dir`` in the node config (each SuperNode its own disk) snapshots go there,
    under a hash of the server's checkpoint folder; otherwise (simulation, shared disk) into
    ``<checkpoint_dir>/nodes/round-<r>/``.
    """
    pid = int(context.node_config.get("partition-id", 0))
    configured = str(context.node_config.get("state-dir", "") or "")
    if configured:
        tag = hashlib.sha1(checkpoint_dir.encode()).hexdigest()[:12]
        base = Path(configured).expanduser() / "checkpoints" / tag
    else:
        base = Path(checkpoint_dir) / "nodes"
    return base / f"round-{server_round:06d}" / f"part-{pid}.npz"


def _nbytes(groups: Groups) -> int:
    return sum(a.nbytes for g in groups.values() for a in g.values())


def _write_npz(path: Path, groups: Groups) -> None:
    """Write all groups to one ``.npz`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{name}{SEP}{key}": np.asarray(arr)
            for name, group in groups.items() for key, arr in group.items()}
    names = np.array(sorted(groups), dtype=np.str_)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, __names__=names, **flat)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_npz(path: Path) -> Groups:
    try:
        with np.load(path, allow_pickle=False) as data:
            groups: Groups = {str(n): {} for n in data["__names__"]}
            for flat in data.files:
                if flat == "__names__":
                    continue
                name, _, key = flat.partition(SEP)
                groups.setdefault(name, {})[key] = data[flat]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"node store file {path} is missing or unreadable ({err}); restart the "
                        "run without resume, or restore the file") from None
    return groups


def _cache_put(key: tuple[str, int], version: int, groups: Groups) -> None:
    _CACHE.pop(key, None)
    size = _nbytes(groups)
    if size > CACHE_BYTES:
        return
    _CACHE[key] = (version, groups, size)
    while sum(entry[2] for entry in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)


def clear_cache() -> None:
    """Forget every cached store of this process (the next open reads from disk)."""
    _CACHE.clear()


class NodeStore:
    """Private state of one node: named groups of arrays, in the Context or spilled to disk.

    Parameters
    ----------
    context : Context
        The node's Flower Context; only a pointer lives in it once the store spills.
    spill_mb : float
        Threshold in MiB (``store-spill-mb``): a store larger than this goes to disk.

    Notes
    -----
    Arrays handed to :meth:`put` or returned by :meth:`get` must not be changed in place;
    build new arrays and :meth:`put` them.

    """

    def __init__(self, context: Context, spill_mb: float) -> None:
        self.context, self.spill_bytes = context, int(spill_mb * 2**20)
        self.pid = int(context.node_config.get("partition-id", 0))
        meta = context.state.config_records.get(META_KEY)
        self.meta = dict(meta) if meta is not None else {"names": [], "version": 0}
        self.groups: Groups = {}
        if self.meta.get("spilled"):
            key = (str(self.meta["token"]), self.pid)
            cached = _CACHE.get(key)
            if cached is not None and cached[0] == int(self.meta["version"]):
                _CACHE.move_to_end(key)
                self.groups = dict(cached[1])
            else:
                self.groups = _read_npz(Path(str(self.meta["path"])))
                _cache_put(key, int(self.meta["version"]), dict(self.groups))
        else:
            for name in self.meta.get("names", []):
                self.groups[name] = from_record(context.state.array_records[name])
        self.dirty = False

    @property
    def spilled(self) -> bool:
        """Whether the committed store lives on disk (the Context holds a pointer only)."""
        return bool(self.meta.get("spilled"))

    def get(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of group ``name``, or ``None`` if it was never stored."""
        return self.groups.get(name)

    def put(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Set group ``name`` (kept in memory until :meth:`commit`)."""
        self.groups[name] = dict(arrays)
        self.dirty = True

    def names(self) -> list[str]:
        """Names of the stored groups."""
        return sorted(self.groups)

    def nbytes(self) -> int:
        """Total bytes of the stored arrays."""
        return _nbytes(self.groups)

    def replace_all(self, groups: Groups) -> None:
        """Drop every group and store ``groups`` instead (used by :meth:`restore`)."""
        self.groups = {name: dict(g) for name, g in groups.items()}
        self.dirty = True

    def commit(self) -> None:
        """Write the store back: into the Context while small, else to a new file on disk."""
        if not self.dirty:
            return
        state = self.context.state
        old = dict(self.meta)
        for name in old.get("names", []):
            if name in state.array_records:
                del state[name]
        version = int(old.get("version", 0)) + 1
        meta: dict = {"names": self.names(), "version": version, "spilled": False}
        if self.nbytes() <= self.spill_bytes:
            for name, group in self.groups.items():
                state[name] = to_record(group)
        else:
            token = str(old.get("token") or
                        f"run{self.context.run_id}-{uuid.uuid4().hex[:12]}")
            folder = state_root(self.context) / "live" / token / f"part-{self.pid}"
            path = folder / f"v{version:08d}.npz"
            _write_npz(path, self.groups)
            _cache_put((token, self.pid), version, dict(self.groups))
            meta.update(spilled=True, token=token, path=str(path))
            # keep the previous version too: a Context that was not saved still points to it
            for stale in folder.glob("v*.npz"):
                if stale.name not in (path.name, Path(str(old.get("path", ""))).name):
                    stale.unlink(missing_ok=True)
        if old.get("spilled") and not meta["spilled"]:
            Path(str(old["path"])).unlink(missing_ok=True)
        state[META_KEY] = ConfigRecord(meta)
        self.meta, self.dirty = meta, False

    def _foreign(self) -> Groups:
        """ArrayRecords that other code keeps in the Context directly (not via the store)."""
        return {name: from_record(rec) for name, rec in self.context.state.array_records.items()
                if name not in self.groups}

    def snapshot(self, path: Path) -> int:
        """Write the whole store to ``path`` (atomically); returns the bytes stored.

        ArrayRecords that other node code keeps in the Context directly are included too
        (as groups ``ctx:<name>``), so that a resume restores them as well.
        """
        groups = dict(self.groups)
        groups.update({f"{CTX}{name}": g for name, g in self._foreign().items()})
        _write_npz(Path(path), groups)
        return _nbytes(groups)

    def restore(self, path: Path) -> None:
        """Replace the store (and the Context's own ArrayRecords) by the snapshot at ``path``.

        Raises
        ------
        DataError
            If the snapshot is missing or unreadable.

        """
        groups = _read_npz(Path(path))
        for name in self._foreign():
            del self.context.state[name]
        for name, group in groups.items():
            if name.startswith(CTX):
                self.context.state[name[len(CTX):]] = to_record(group)
        self.replace_all({n: g for n, g in groups.items() if not n.startswith(CTX)})
        self.dirty = True
        self.commit()


def open_store(context: Context, spill_mb: float) -> NodeStore:
    """The node's store (see :class:`NodeStore`)."""
    return NodeStore(context, spill_mb)
