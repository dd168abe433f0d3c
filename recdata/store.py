"""Where splits live: built once per source content and split parameters, cached on disk.

A cached split is keyed by everything that decides its content: the sha256 of every source file
of the dataset (:func:`florec.recdata.datasets.source_files`), the resolved data root, the
loader version :data:`LOADER_VERSION` and the split parameters (kind, seed, rating threshold,
synthetic generator). The sources are hashed (once per process and file version: path, size,
mtime) before a cached split is reused, so an edited, replaced or missing source file builds a
new split instead of silently reusing the old one. Each split folder holds ``source.json``,
the manifest its key was computed from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from florec.recdata.download import cache_root
from florec.recdata.recbole_io import storage_name
from florec.recdata.runconfig import RunConfig
from florec.recdata.splits import Split, make_split, read_split, write_split

#: Bump when a loader or the split code changes what a split of the same sources holds.
LOADER_VERSION = 2


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, _size: int, _mtime_ns: int, _inode: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hashed once per process for each (path, size, mtime, inode)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def source_manifest(dataset: str, kind: str, seed: int, data_dir: str | None = None,
                    min_rating: float = 1.0, synthetic: dict | None = None) -> dict[str, Any]:
    """Everything that decides a split's content, with the sha256 of each source file.

    Raises
    ------
    DataError
        The dataset is unknown or its data root does not exist.

    """
    from florec.recdata.datasets import source_files

    root, files = source_files(dataset, data_dir or None)
    base = root if root is not None else None

    def name(f: Path) -> str:
        if base is not None and f.is_relative_to(base):
            return str(f.relative_to(base))
        return str(f.resolve())

    return {"dataset": dataset, "data_root": None if root is None else str(root),
            "files": {name(f): file_sha256(f) for f in files}, "loader": LOADER_VERSION,
            "split": kind, "seed": int(seed), "min_rating": float(min_rating),
            "synthetic": dict(sorted((synthetic or {}).items())) if dataset == "synthetic"
            else {}}


def manifest_key(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest (canonical JSON)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def split_dir(dataset: str, kind: str, seed: int, min_rating: float = 1.0,
              synthetic: dict | None = None, key: str = "") -> Path:
    """The folder of one split: a readable tag of its parameters and its content key."""
    tag = f"{kind}-seed{seed}" + (f"-min{min_rating:g}" if min_rating != 1.0 else "")
    if dataset == "synthetic" and synthetic:
        tag += "-" + "-".join(f"{k}{v}" for k, v in sorted(synthetic.items()))
    return cache_root() / "splits" / storage_name(dataset) / (f"{tag}-{key[:16]}" if key else tag)


@functools.lru_cache(maxsize=8)
def _cached(key: str, manifest_json: str, data_dir: str) -> tuple[Split, Path]:
    m = json.loads(manifest_json)
    dataset, synthetic = m["dataset"], m["synthetic"] or None
    path = split_dir(dataset, m["split"], m["seed"], m["min_rating"], synthetic, key)
    name = storage_name(dataset)
    if not (path / f"{name}.test.inter").exists():
        from florec.recdata.datasets import load_dataset

        inter = load_dataset(dataset, data_dir or None, min_rating=m["min_rating"],
                             synthetic=synthetic)
        write_split(make_split(inter, m["split"], m["seed"]), path, name, inter)
        manifest = path / "source.json"
        if not manifest.exists():
            tmp = path / f".source.json.{os.getpid()}"
            tmp.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, manifest)
    return read_split(path, name), path


def get_split(dataset: str, kind: str = "loo", seed: int = 0, data_dir: str | None = None,
              min_rating: float = 1.0, synthetic: dict | None = None) -> tuple[Split, Path]:
    """Load a split, building and writing it first if these sources and parameters are new.

    Parameters
    ----------
    dataset : str
        Registered dataset name, or ``recbole:<folder>`` (RecBole atomic files).
    kind : {"loo", "ratio", "ratio-fs", "global", "given"}
        Split protocol.
    seed : int
        Split seed (ratio splits only; LOO is deterministic).
    data_dir : str, optional
        Data root (else ``$FLOREC_DATA_DIR`` or download, see :mod:`florec.recdata.datasets`).
    min_rating : float
        Ratings below this are dropped (implicit feedback threshold).
    synthetic : dict, optional
        Generator parameters of the ``synthetic`` dataset.

    Returns
    -------
    (Split, Path)
        The split and the folder of its atomic files.

    Raises
    ------
    DataError
        The dataset is unknown, its data root is missing, or its files are malformed.

    """
    from florec.recdata.shard import refuse_data

    refuse_data(f"the {kind} split of {dataset}")  # a data-free server (FLOREC_NO_DATA=1)
    manifest = source_manifest(dataset, kind, int(seed), data_dir, float(min_rating), synthetic)
    return _cached(manifest_key(manifest), json.dumps(manifest, sort_keys=True), data_dir or "")


def num_buckets_for(cfg: RunConfig) -> int:
    """How many nodes the partition of this config needs (builds the split once if new)."""
    from florec.recdata.partition import num_buckets

    split, _ = get_split(
        cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating, cfg.synthetic_params()
    )
    return num_buckets(split.n_users, num_nodes=cfg.num_nodes, users_per_node=cfg.users_per_node)
