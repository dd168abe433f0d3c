"""Where splits live: built once per (dataset, split, seed), cached on disk and in memory."""

from __future__ import annotations

import functools
from pathlib import Path

from florec.recdata.download import cache_root
from florec.recdata.recbole_io import storage_name
from florec.recdata.runconfig import RunConfig
from florec.recdata.splits import Split, make_split, read_split, write_split


def split_dir(dataset: str, kind: str, seed: int, min_rating: float = 1.0,
              synthetic: dict | None = None) -> Path:
    """The folder of one split; its name carries every input that changes the split."""
    dataset = storage_name(dataset)
    tag = f"{kind}-seed{seed}" + (f"-min{min_rating:g}" if min_rating != 1.0 else "")
    if dataset == "synthetic" and synthetic:
        tag += "-" + "-".join(f"{k}{v}" for k, v in sorted(synthetic.items()))
    return cache_root() / "splits" / dataset / tag


@functools.lru_cache(maxsize=8)
def _cached(dataset: str, kind: str, seed: int, data_dir: str, min_rating: float,
            synthetic_items: tuple) -> tuple[Split, Path]:
    synthetic = dict(synthetic_items) or None
    path = split_dir(dataset, kind, seed, min_rating, synthetic)
    name = storage_name(dataset)
    if not (path / f"{name}.test.inter").exists():
        from florec.recdata.datasets import load_dataset

        inter = load_dataset(dataset, data_dir or None, min_rating=min_rating, synthetic=synthetic)
        write_split(make_split(inter, kind, seed), path, name, inter)
    return read_split(path, name), path


def get_split(dataset: str, kind: str = "loo", seed: int = 0, data_dir: str | None = None,
              min_rating: float = 1.0, synthetic: dict | None = None) -> tuple[Split, Path]:
    """Load a split, building and writing it first if this is its first use.

    Parameters
    ----------
    dataset : str
        Registered dataset name, or ``recbole:<folder>`` (RecBole atomic files).
    kind : {"loo", "ratio", "global"}
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

    """
    items = tuple(sorted((synthetic or {}).items())) if dataset == "synthetic" else ()
    return _cached(dataset, kind, int(seed), data_dir or "", float(min_rating), items)


def num_buckets_for(cfg: RunConfig) -> int:
    """How many nodes the partition of this config needs (builds the split once if new)."""
    from florec.recdata.partition import num_buckets

    split, _ = get_split(
        cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating, cfg.synthetic_params()
    )
    return num_buckets(split.n_users, num_nodes=cfg.num_nodes, users_per_node=cfg.users_per_node)
