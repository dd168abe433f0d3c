"""Read RecBole atomic files, so data and splits move between RecBole and FloRec both ways.

A dataset named ``recbole:<folder>`` is read from RecBole's own layout: ``<folder>/<name>.inter``
(one whole dataset, split by FloRec) or ``<folder>/<name>.{train,valid,test}.inter`` (a split
RecBole made, used as given with ``split=given``), where ``<name>`` is the folder's name. The
header names each column ``field:type`` (``user_id:token``, ``item_id:token``, optional
``timestamp:float`` and ``rating:float``); columns are tab-separated. FloRec's own splits are
written in the same form (:func:`florec.recdata.splits.write_split`, ``florec data split``).

A (user, item) pair is kept once. In split files an earlier part wins (train, then valid, then
test): a valid or test row that repeats a pair of an earlier part is dropped, the count is
logged in one warning line and reported in ``results.json`` (``given_overlap_dropped``, see
:func:`data_notes`), and ``recbole:<folder>?strict`` refuses such files instead.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from florec.recdata.errors import DataError
from florec.recdata.interactions import Interactions

PREFIX = "recbole:"
STRICT = "?strict"
PARTS = ("train", "valid", "test")
log = logging.getLogger(__name__)


def is_recbole(dataset: str) -> bool:
    """Whether a dataset name points at RecBole atomic files."""
    return dataset.startswith(PREFIX)


def storage_name(dataset: str) -> str:
    """A file-system-safe name for cached splits (``recbole-<name>-<hash of the path>``).

    ``fedcia:<folder>`` names get ``fedcia-<name>-<hash>``
    (:func:`florec.recdata.fedcia_folder.storage_name`); registered names stay as they are.
    """
    from florec.recdata import fedcia_folder

    if fedcia_folder.is_fedcia_folder(dataset):
        return fedcia_folder.storage_name(dataset)
    if not is_recbole(dataset):
        return dataset
    folder = recbole_folder(dataset).resolve()
    key = str(folder) + (STRICT if dataset.endswith(STRICT) else "")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"recbole-{folder.name}-{digest}"


def recbole_folder(dataset: str) -> Path:
    """The folder of ``recbole:<folder>[?strict]``."""
    return Path(dataset[len(PREFIX):].removesuffix(STRICT)).expanduser()


def read_inter(path: Path) -> dict[str, np.ndarray]:
    """Columns of one atomic ``.inter`` file, by field name (tokens as str, floats as float64).

    Raises
    ------
    DataError
        The file is not UTF-8 or ends inside a line (cut short), the header lacks
        ``user_id``/``item_id``, a column has an unknown type, a row is malformed, a token is
        empty, or a float (timestamp, rating) is not a finite number.

    """
    fix = f"write {path.name} as RecBole atomic file (tab-separated, header field:type)"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 (byte 0x{raw[err.start]:02x}); "
                        f"re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    if text and not text.endswith("\n"):
        raise DataError(f"{path}: line {text.count(chr(10)) + 1} has no line end, so the file "
                        "may be cut short; restore the whole file, or end that line with a "
                        "newline if it is complete")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                           quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"{path} is empty; {fix}")
    fields = [h.split(":", 1) for h in rows[0]]
    if any(len(f) != 2 for f in fields):
        raise DataError(f"{path}: header {rows[0]!r} is not field:type; {fix}")
    names = [f[0] for f in fields]
    if "user_id" not in names or "item_id" not in names:
        raise DataError(f"{path} has no user_id and item_id columns (found {names}); {fix}")
    if any(t.endswith("_seq") for name, t in fields if name in ("user_id", "item_id")):
        raise DataError(f"{path} is a sequential (token_seq) file; give the plain .inter file")
    body = [r for r in rows[1:] if r]
    if any(len(r) != len(names) for r in body):
        bad = next(i for i, r in enumerate(body, 2) if len(r) != len(names))
        raise DataError(f"{path}: line {bad} has a wrong number of columns; {fix}")
    lines = [i for i, r in enumerate(rows[1:], 2) if r]  # file line of each body row
    out = {}
    for j, (name, kind) in enumerate(fields):
        col = [r[j] for r in body]
        if kind == "float":
            arr = _floats(col, path, name, lines)
        else:
            arr = np.asarray(col, dtype=str)
        empty = np.flatnonzero(arr == "") if name in ("user_id", "item_id") else []
        if len(empty):
            raise DataError(f"{path}: line {lines[empty[0]]} has an empty {name}; give every "
                            "row a user and an item")
        if kind == "token" and len(arr) and np.char.isdigit(arr).all():
            arr = arr.astype(np.int64)  # numeric tokens keep numeric order (FloRec's own ids)
        out[name] = arr
    return out


def _floats(col: list[str], path: Path, name: str, lines: list[int]) -> np.ndarray:
    """A ``float`` column as float64; a non-number, NaN or infinity is a one-line error."""
    try:
        arr = np.asarray(col, dtype=np.float64)
    except ValueError:
        for i, value in enumerate(col):
            try:
                float(value)
            except ValueError:
                raise DataError(f"{path}: line {lines[i]} has {name}={value!r}, not a number; "
                                "fix or drop that line") from None
        raise
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise DataError(f"{path}: line {lines[bad[0]]} has {name}={col[bad[0]]!r}, not a finite "
                        f"number ({len(bad)} such lines); fix or drop them")
    return arr


def _given_rows(user: np.ndarray, item: np.ndarray, time: np.ndarray | None,
                rating: np.ndarray | None, labels: np.ndarray, min_rating: float
                ) -> tuple[np.ndarray, dict[str, int]]:
    """Rows kept from split files, and per later part the rows dropped as repeats.

    Rows with ``rating < min_rating`` go first; then each (user, item) pair keeps one row: the
    one of the earliest part (train, valid, test), within a part the first in time (file order
    where ``time`` is None or tied). Returns the kept rows (ascending) and
    ``{"valid": n, "test": m}``: rows dropped because an earlier part has their pair.
    """
    rows = np.arange(len(user)) if rating is None else np.flatnonzero(rating >= min_rating)
    when = np.arange(len(user), dtype=np.float64) if time is None else time
    rows = rows[np.lexsort((when[rows], labels[rows]))]  # part first, then time
    key = user[rows].astype(np.int64) * (int(item.max(initial=0)) + 1) + item[rows]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    later = labels[rows] > labels[rows][first][inverse]
    dropped = np.bincount(labels[rows][later], minlength=3)
    return np.sort(rows[first]), {"valid": int(dropped[1]), "test": int(dropped[2])}


def _read_folder(dataset: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Columns of a ``recbole:`` folder and the part label of each row (None: one file)."""
    folder = recbole_folder(dataset)
    name = folder.name
    split_files = [folder / f"{name}.{p}.inter" for p in PARTS]
    if all(f.is_file() for f in split_files):
        columns = [read_inter(f) for f in split_files]
        labels = np.concatenate([np.full(len(c["user_id"]), k, np.int8)
                                 for k, c in enumerate(columns)])
        return {k: np.concatenate([c[k] for c in columns]) for k in columns[0]
                if all(k in c for c in columns)}, labels
    if (folder / f"{name}.inter").is_file():
        return read_inter(folder / f"{name}.inter"), None
    raise DataError(f"dataset {dataset!r}: {folder} holds neither {name}.inter nor "
                    f"{name}.{{train,valid,test}}.inter; point recbole: at a RecBole "
                    "dataset folder")


def _codes(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return (np.unique(cols["user_id"], return_inverse=True)[1],
            np.unique(cols["item_id"], return_inverse=True)[1])


def load_recbole(dataset: str, min_rating: float = 1.0) -> Interactions:
    """Load ``recbole:<folder>`` as implicit interactions (with ``presplit`` if split files).

    Rows with ``rating < min_rating`` are dropped when a rating column exists; each (user,
    item) pair is kept at its first occurrence (in time order where timestamps exist); in split
    files the earliest part wins (train, valid, test) and the rows dropped from a later part are
    counted in one warning line.

    Raises
    ------
    DataError
        The folder or its files are missing or malformed, or (``recbole:<folder>?strict``) a
        valid or test row repeats a pair of an earlier part.

    """
    from florec.recdata.loaders import implicit_rows

    cols, labels = _read_folder(dataset)
    user, item = _codes(cols)
    time = cols.get("timestamp")
    if labels is None:
        rows = implicit_rows(user, item, time, cols.get("rating"), min_rating)
    else:
        rows, dropped = _given_rows(user, item, time, cols.get("rating"), labels, min_rating)
        if dropped["valid"] or dropped["test"]:
            what = (f"{dropped['valid']} valid and {dropped['test']} test rows repeat a (user, "
                    "item) pair of an earlier part (train, then valid)")
            if dataset.endswith(STRICT):
                raise DataError(f"dataset {dataset!r}: {what}; remove them from the files, or "
                                f"drop {STRICT} to keep each pair in its earliest part")
            log.warning("dataset %s: %s and are dropped (kept in the earlier part); name it "
                        "%s%s to refuse such files", dataset, what, dataset, STRICT)
    if len(rows) == 0:
        raise DataError(f"dataset {dataset!r} has no interactions with rating >= {min_rating}")
    return Interactions.from_raw(
        cols["user_id"][rows], cols["item_id"][rows], None if time is None else time[rows],
        name=storage_name(dataset), presplit=None if labels is None else labels[rows])


@functools.lru_cache(maxsize=4)
def _overlap(dataset: str, min_rating: float, stamp: tuple) -> dict[str, int] | None:
    cols, labels = _read_folder(dataset)
    if labels is None:
        return None
    user, item = _codes(cols)
    return _given_rows(user, item, cols.get("timestamp"), cols.get("rating"), labels,
                       min_rating)[1]


def data_notes(cfg: Any) -> dict[str, Any]:
    """Facts about a run's data for its ``results.json`` entry (empty for most datasets).

    For ``recbole:`` split files read with ``split='given'``: ``given_overlap_dropped``, the
    valid and test rows dropped because an earlier part has their (user, item) pair.
    """
    if not is_recbole(cfg.dataset) or cfg.split != "given":
        return {}
    folder = recbole_folder(cfg.dataset)
    files = sorted(folder.glob(f"{folder.name}.*.inter"))
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    dropped = _overlap(cfg.dataset, float(cfg.min_rating), stamp)
    return {} if dropped is None else {"given_overlap_dropped": dropped}
