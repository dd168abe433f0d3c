"""Loaders of the datasets read from local files: MovieLens 100K and 1M, Amazon Scientific.

Each reads its raw files (checksummed where the files are fixed), keeps the rows that count as
implicit feedback (:func:`implicit_rows`) and returns :class:`Interactions`; the registry in
:mod:`florec.recdata.datasets` names them.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from florec.recdata.checksums import AMAZON_SCIENTIFIC_SHA256, ML1M_SHA256, verify_files
from florec.recdata.download import ml100k_folder
from florec.recdata.errors import DataError
from florec.recdata.interactions import Interactions

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
AMAZON_FILES = ("Scientific.train.inter", "Scientific.valid.inter", "Scientific.test.inter",
                "Scientific.item2index", "Scientific.text")


def implicit_rows(user: np.ndarray, item: np.ndarray, time: np.ndarray | None,
                  rating: np.ndarray | None = None, min_rating: float = 1.0) -> np.ndarray:
    """Return the indices (ascending) of the rows kept as implicit feedback.

    Keeps rows with ``rating >= min_rating`` and, per (user, item) pair, the first row in time
    order (file order where ``time`` is None or tied). Raw ids must be non-negative integers.
    """
    rows = np.arange(len(user)) if rating is None else np.flatnonzero(rating >= min_rating)
    if time is not None:
        rows = rows[np.argsort(time[rows], kind="stable")]
    key = user[rows].astype(np.int64) * (int(item.max(initial=0)) + 1) + item[rows]
    _, first = np.unique(key, return_index=True)
    return np.sort(rows[first])


def _finish(name: str, user, item, time, rating, min_rating: float, **kwargs) -> Interactions:
    rows = implicit_rows(user, item, time, rating, min_rating)
    if len(rows) == 0:
        raise DataError(f"dataset {name!r} has no interactions with rating >= {min_rating}; "
                        "choose a smaller min_rating")
    presplit = kwargs.pop("presplit", None)
    return Interactions.from_raw(
        user[rows], item[rows], None if time is None else time[rows], name=name,
        presplit=None if presplit is None else presplit[rows], **kwargs)


def _read_delimited(path: Path, names: list[str], delimiter: str, header: bool,
                    data: bytes | None = None) -> dict[str, np.ndarray]:
    """Read an all-integer delimited file with pyarrow into int64 numpy columns."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    source = io.BytesIO(path.read_bytes() if data is None else data)
    try:
        table = pacsv.read_csv(
            source, read_options=pacsv.ReadOptions(column_names=names,
                                                   skip_rows=1 if header else 0),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.int64() for n in names}))
    except (pa.ArrowInvalid, ValueError) as exc:
        raise DataError(f"file {path} is malformed ({' '.join(str(exc).split())[:120]}); "
                        "replace it with a fresh copy of the dataset") from None
    return {n: table.column(n).to_numpy() for n in names}


def _read_titles(path: Path, sep: str) -> dict[int, str]:
    """Raw item id -> title from ``u.item`` / ``movies.dat`` (latin-1, title in column 2)."""
    titles = {}
    for line in path.read_bytes().decode("latin-1").splitlines():
        parts = line.split(sep)
        if len(parts) >= 2 and parts[0].strip():
            titles[int(parts[0])] = parts[1]
    return titles


def load_ml100k(root: Path | None, min_rating: float, _params: dict) -> Interactions:
    """MovieLens 100K (``u.data``, titles from ``u.item``): local, cached or fetched."""
    folder = ml100k_folder(root)
    cols = _read_delimited(folder / "u.data", ["user", "item", "rating", "time"], "\t", False)
    titles = _read_titles(folder / "u.item", "|") if (folder / "u.item").is_file() else None
    return _finish("ml-100k", cols["user"], cols["item"], cols["time"], cols["rating"],
                   min_rating, item_titles=titles,
                   item_catalogue=None if titles is None else np.fromiter(titles, np.int64))


def load_ml1m(root: Path | None, min_rating: float, _params: dict) -> Interactions:
    """MovieLens 1M from ``<root>/ml-1m`` (``ratings.dat`` or ``ratings_no_timestamp.csv``)."""
    folder = None if root is None else root / "ml-1m"
    fix = (f"download ml-1m.zip from GroupLens ({ML1M_URL}) and unpack it into "
           f"{'<data_root>/ml-1m' if folder is None else folder} (set FLOREC_DATA_DIR)")
    if folder is None or not folder.is_dir():
        where = "no data folder is set" if folder is None else f"{folder} does not exist"
        raise DataError(f"dataset 'ml-1m' is not on this machine ({where}); {fix}")
    if (folder / "ratings.dat").is_file():
        ratings, sep = folder / "ratings.dat", "::"
    elif (folder / "ratings_no_timestamp.csv").is_file():
        ratings, sep = folder / "ratings_no_timestamp.csv", ","
    else:
        raise DataError(f"{folder} has neither ratings.dat nor ratings_no_timestamp.csv; {fix}")
    if not (folder / "movies.dat").is_file():
        raise DataError(f"file {folder / 'movies.dat'} is missing; {fix}")
    verify_files(folder, ML1M_SHA256, [ratings.name, "movies.dat"], fix=fix)
    if sep == "::":
        names = ["user", "item", "rating", "time"]
        cols = _read_delimited(ratings, names, "\t", False,
                               data=ratings.read_bytes().replace(b"::", b"\t"))
    else:
        cols = _read_delimited(ratings, ["user", "item", "rating"], ",", True)
    titles = _read_titles(folder / "movies.dat", "::")
    return _finish("ml-1m", cols["user"], cols["item"], cols.get("time"), cols["rating"],
                   min_rating, item_titles=titles,
                   item_catalogue=np.fromiter(titles, np.int64))


def _read_inter(path: Path) -> list[tuple[int, list[int], int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or len(lines[0].split("\t")) != 3:
            raise ValueError("bad header")
        return [(int(u), [int(x) for x in hist.split()], int(target))
                for u, hist, target in (line.split("\t") for line in lines[1:] if line)]
    except ValueError:
        raise DataError(f"file {path} is not a RecBole sequential .inter file "
                        "(user_id, item_id_list, item_id); replace it with a fresh copy") from None


def load_amazon_scientific(root: Path | None, min_rating: float, _params: dict
                           ) -> Interactions:
    """Amazon Scientific (UniSRec files in ``<root>/amazon-scientific``), split kept as given."""
    folder = None if root is None else root / "amazon-scientific"
    fix = ("put the UniSRec 'Scientific' files (" + ", ".join(AMAZON_FILES) + ") into "
           f"{'<data_root>/amazon-scientific' if folder is None else folder} "
           "(set FLOREC_DATA_DIR)")
    missing = [n for n in AMAZON_FILES if folder is None or not (folder / n).is_file()]
    if missing:
        where = "no data folder is set" if folder is None else f"{folder} lacks {missing[0]}"
        raise DataError(f"dataset 'amazon-scientific' is not on this machine ({where}); {fix}")
    verify_files(folder, AMAZON_SCIENTIFIC_SHA256, AMAZON_FILES, fix=fix)
    # Lines of one user in time order: train lines are stored latest first, then valid, test.
    lines: dict[int, list] = defaultdict(list)
    for label, split in enumerate(("train", "valid", "test")):
        rows = _read_inter(folder / f"Scientific.{split}.inter")
        for user, hist, target in (reversed(rows) if label == 0 else rows):
            lines[user].append((hist, target, label))
    users, items, labels, positions = [], [], [], []
    for user, user_lines in lines.items():
        seq, lab = list(user_lines[0][0]), [0] * len(user_lines[0][0])
        for hist, target, label in user_lines:
            if seq[len(seq) - len(hist):] != hist:
                raise DataError(f"the .inter files in {folder} disagree on user {user}'s "
                                f"history; {fix}")
            seq.append(target)
            lab.append(label)
        users.extend([user] * len(seq))
        items.extend(seq)
        labels.extend(lab)
        positions.extend(range(len(seq)))
    index = {}
    for line in (folder / "Scientific.item2index").read_text(encoding="utf-8").splitlines():
        asin, _, idx = line.partition("\t")
        index[asin] = int(idx)
    texts = {}
    for line in (folder / "Scientific.text").read_text(encoding="utf-8").splitlines()[1:]:
        asin, _, text = line.partition("\t")
        if asin in index:
            texts[index[asin]] = text.strip()
    return _finish("amazon-scientific", np.asarray(users, np.int64), np.asarray(items, np.int64),
                   np.asarray(positions, np.float64), None, min_rating,
                   presplit=np.asarray(labels, np.int8), item_titles=texts,
                   item_catalogue=np.fromiter(index.values(), np.int64))

