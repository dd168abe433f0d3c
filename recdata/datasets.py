"""The dataset registry: every dataset becomes implicit-feedback :class:`Interactions`.

Data root: the ``data_dir`` argument, else ``$FLOREC_DATA_DIR``; one folder per dataset under
it (``ml-100k/``, ``ml-1m/``, ``amazon-scientific/``, ``fedcia/``). ML-100K can also come
from the cache or be fetched (:mod:`florec.recdata.download`); ``synthetic`` is generated
(:mod:`florec.recdata.synthetic`); the FedCIA authors' splits are read by
:mod:`florec.recdata.fedcia_data`, the MovieLens and Amazon files by :mod:`florec.recdata.loaders`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florec.recdata.download import ml100k_folder
from florec.recdata.errors import ConfigError, DataError
from florec.recdata.fedcia_data import load_fedcia
from florec.recdata.fedcia_folder import is_fedcia_folder, load_fedcia_folder
from florec.recdata.fedcia_folder import parse_name as parse_fedcia_name
from florec.recdata.fedcia_folder import source_files as fedcia_source_files
from florec.recdata.fedcia_graphs import load_fedcia_graph
from florec.recdata.interactions import Interactions
from florec.recdata.loaders import load_amazon_scientific, load_ml1m, load_ml100k
from florec.recdata.recbole_io import is_recbole, load_recbole, recbole_folder
from florec.recdata.synthetic import generate_synthetic

Loader = Callable[[Path | None, float, dict[str, Any]], Interactions]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its name, a one-line description, its loader and its source folders.

    ``folders(root)`` names the folders (or files) under the data root that the loader reads;
    their content keys the cached splits (:func:`source_files`).
    """

    name: str
    description: str
    loader: Loader
    folders: Callable[[Path | None], list[Path]] = lambda _root: []


def dataset_names() -> list[str]:
    """Return the registered dataset names, in registry order.

    Returns
    -------
    list of str
        Names accepted by :func:`load_dataset`.

    """
    return list(DATASETS)


def _registered(name: str) -> DatasetSpec:
    """The registered dataset ``name``, or a one-line error that lists the known ones."""
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"dataset {name!r} is unknown; choose one of: "
                        f"{', '.join(dataset_names())} (florec data list), or "
                        "recbole:<folder> for RecBole atomic files, fedcia:<folder> for the "
                        "FedCIA per-client layout")
    return spec


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    min_rating: float = 1.0,
    synthetic: dict[str, Any] | None = None,
) -> Interactions:
    """Load a dataset as implicit feedback.

    Interactions with ``rating >= min_rating`` are kept (datasets without ratings ignore it)
    and each (user, item) pair is kept once, at its first occurrence in time order.

    Parameters
    ----------
    name : str
        A name from :func:`dataset_names`.
    data_dir : str or Path, optional
        The data root (one folder per dataset); default ``$FLOREC_DATA_DIR``.
    min_rating : float, default 1.0
        Smallest rating that counts as a positive interaction (1.0 keeps all MovieLens ratings).
    synthetic : dict, optional
        Generator parameters, only for ``name="synthetic"`` (see
        :func:`florec.recdata.synthetic.generate_synthetic`).

    Returns
    -------
    Interactions
        The dataset with contiguous user and item ids.

    Raises
    ------
    DataError
        The dataset is unknown, missing, malformed or fails its checksum.
    ConfigError
        ``min_rating`` or the synthetic parameters are invalid.

    """
    if is_recbole(name):
        return load_recbole(name, float(min_rating))
    if is_fedcia_folder(name):
        return load_fedcia_folder(name)
    spec = _registered(name)
    if synthetic and name != "synthetic":
        raise ConfigError(f"synthetic parameters were given for dataset {name!r}; drop them "
                          "or choose dataset 'synthetic'")
    if isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)) \
            or not math.isfinite(min_rating):
        raise ConfigError(f"min_rating={min_rating!r} is not a finite number; use e.g. 1.0 "
                          "(all ratings) or 4.0 (ratings 4 and 5)")
    return spec.loader(resolve_data_root(data_dir), float(min_rating), dict(synthetic or {}))


def resolve_data_root(data_dir: str | Path | None = None) -> Path | None:
    """Return the data root: ``data_dir``, else ``$FLOREC_DATA_DIR``, else ``None``.

    Raises
    ------
    DataError
        The chosen folder does not exist.

    """
    origin = "data_dir"
    if data_dir is None and os.environ.get("FLOREC_DATA_DIR"):
        data_dir, origin = os.environ["FLOREC_DATA_DIR"], "FLOREC_DATA_DIR"
    if data_dir is None:
        return None
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} (from {origin}) does not exist; create it or "
                        "point data_dir / FLOREC_DATA_DIR at the folder holding the datasets")
    return root


def _load_fedcia_ml100k(root: Path | None, _min_rating: float, _params: dict) -> Interactions:
    return load_fedcia("fedcia-ml100k", root)


def _load_fedcia_ml1m(root: Path | None, _min_rating: float, _params: dict) -> Interactions:
    return load_fedcia("fedcia-ml1m", root)


def _graph_loader(name: str) -> Loader:
    return lambda root, _min_rating, _params: load_fedcia_graph(name, root)


def _load_synthetic(_root: Path | None, _min_rating: float, params: dict) -> Interactions:
    return generate_synthetic(**params)


def _under(*parts: str) -> Callable[[Path | None], list[Path]]:
    """Source folders ``<root>/<part>`` (none without a data root: the loader then fails)."""
    return lambda root: [] if root is None else [root / part for part in parts]


def source_files(name: str, data_dir: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """The resolved data root and every file a dataset is read from, sorted.

    Files are those under the dataset's source folders (hidden files skipped); ``ml-100k``
    resolves its folder as :func:`load_dataset` does (local, cache, or fetched), ``synthetic``
    has none, ``recbole:<folder>`` has its ``.inter`` files.

    Raises
    ------
    DataError
        The dataset is unknown, or the data root (``data_dir``/``$FLOREC_DATA_DIR``) does not
        exist.

    """
    if is_recbole(name):
        folder = recbole_folder(name).resolve()
        return folder, sorted(folder.glob("*.inter")) if folder.is_dir() else []
    if is_fedcia_folder(name):
        folder = parse_fedcia_name(name)[0].resolve()
        return folder.parent, fedcia_source_files(name)
    spec = _registered(name)
    root = resolve_data_root(data_dir)
    root = None if root is None else root.resolve()
    files: list[Path] = []
    for place in spec.folders(root):
        if place.is_file():
            files.append(place)
        elif place.is_dir():
            files += [f for f in place.rglob("*") if f.is_file()
                      and not any(part.startswith(".") for part in f.relative_to(place).parts)]
    return root, sorted(files)


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("ml-100k", "MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies, "
                "timestamps, titles (local, cached or fetched)", load_ml100k,
                lambda root: [ml100k_folder(root)]),
    DatasetSpec("ml-1m", "MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,883 movies, titles "
                "(local ratings.dat or ratings_no_timestamp.csv)", load_ml1m, _under("ml-1m")),
    DatasetSpec("amazon-scientific", "Amazon 2018 Industrial & Scientific (UniSRec): 8,442 "
                "users, 4,385 items, item text, leave-one-out split (local)",
                load_amazon_scientific, _under("amazon-scientific")),
    DatasetSpec("fedcia-ml100k", "FedCIA authors' ML-100K split: 100 clients of consecutive "
                "users, 943 users, 1,682 items, given global 72/8/20 split (local fedcia/ml100k)",
                _load_fedcia_ml100k, _under("fedcia/ml100k", "ml-100k/u.item")),
    DatasetSpec("fedcia-ml1m", "FedCIA authors' ML-1M split: 100 clients of consecutive users, "
                "6,040 users, 3,952 items, given global 72/8/20 split (local fedcia/ml1m.tar.gz)",
                _load_fedcia_ml1m, _under("fedcia/ml1m.tar.gz", "ml-1m/movies.dat")),
    DatasetSpec("fedcia-bx", "FedCIA authors' Book-Crossing training graph: 100 clients, "
                "18,513 users, 19,997 items, 347,150 edges, no split (use split=ratio; local "
                "fedcia/bx)", _graph_loader("fedcia-bx"), _under("fedcia/bx")),
    DatasetSpec("fedcia-beauty", "FedCIA authors' Amazon Beauty training graph: 100 clients, "
                "22,352 users, 12,100 items, no split (local fedcia/beauty)",
                _graph_loader("fedcia-beauty"), _under("fedcia/beauty")),
    DatasetSpec("fedcia-netflix", "FedCIA authors' Netflix-subset training graph: 100 clients, "
                "19,999 users, 17,719 items, ~4.1M edges, no split (local fedcia/netflix)",
                _graph_loader("fedcia-netflix"), _under("fedcia/netflix")),
    DatasetSpec("synthetic", "seeded synthetic data: power-law popularity, user/item "
                "clusters, timestamps", _load_synthetic),
)}
