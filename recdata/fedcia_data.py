"""The FedCIA authors' own per-client MovieLens splits (github.com/Mingzhe-Han/FedCIA @ bbc4224).

Data root layout (``<root>/fedcia/``): ``ml100k/<c>/{train,valid,test}_dataset.npy`` and
``ml1m.tar.gz`` with members ``ml1m_100/<c>/{train,valid,test}_dataset.npy``, for clients
``c = 0..99``. Each array is a dense int64 0/1 matrix (client users x items). Client ``c`` holds
the consecutive global users ``offset_c .. offset_c + rows_c - 1`` (``offset_c`` = users of the
clients before it), so global user ``u`` is MovieLens user ``u + 1`` and column ``i`` is
MovieLens item ``i + 1``. The archive is read member by member, straight into sparse form: only
one dense array is in memory at a time and nothing is unpacked to disk.

Integrity: every array file read is hashed, and the digests must reproduce the embedded
*manifest digest*, the sha256 of the text lines ``<sha256>  <path>`` + newline (sorted by path; the
paths as in the checksum lists ``fedcia/ml100k.sha256`` and ``fedcia/ml1m.members.sha256``).
Recompute one with ``grep _dataset.npy ml100k.sha256 | sort -k2 | sha256sum`` (``LC_ALL=C``).
When the check fails and such a list lies in ``fedcia/``, the error names the first bad file.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from florec.recdata.checksums import ML1M_SHA256, ML100K_SHA256, sha256_bytes, verify_files
from florec.recdata.errors import DataError
from florec.recdata.interactions import Interactions

FEDCIA_SOURCE = "github.com/Mingzhe-Han/FedCIA @ bbc4224"
PART_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class FedciaSource:
    """Where one FedCIA dataset lives under ``<root>/fedcia`` and what it must hash to."""

    name: str
    location: str  # folder or archive, relative to fedcia/
    prefix: str  # first path component of the array files (in the checksum list)
    manifest_sha256: str  # sha256 of the sorted "<sha256>  <path>" lines of the array files
    n_files: int
    checksum_list: str  # list beside the data, used only to name a bad file
    titles: tuple[str, str, str, dict[str, str]]  # folder, file, separator, known sha256

    @property
    def archive(self) -> bool:
        """Whether the arrays come from a ``.tar.gz`` archive."""
        return self.location.endswith(".tar.gz")


FEDCIA_SOURCES: dict[str, FedciaSource] = {s.name: s for s in (
    FedciaSource("fedcia-ml100k", "ml100k", "ml100k",
                 "df1c813886a633b073bff6b6cca106cde6626fbdd1a373e5f87ec8f25190ec68", 300,
                 "ml100k.sha256", ("ml-100k", "u.item", "|", ML100K_SHA256)),
    FedciaSource("fedcia-ml1m", "ml1m.tar.gz", "ml1m_100",
                 "70ae7ea59fadeb0bb1bc043623e6a864b91e2f4b5ad196a69741da0b3c3b6bb4", 300,
                 "ml1m.members.sha256", ("ml-1m", "movies.dat", "::", ML1M_SHA256)),
)}


def _source(name: str) -> FedciaSource:
    if name not in FEDCIA_SOURCES:
        raise DataError(f"dataset {name!r} is not a FedCIA dataset; choose one of: "
                        f"{', '.join(FEDCIA_SOURCES)}")
    return FEDCIA_SOURCES[name]


def _fix(src: FedciaSource, root: Path | None) -> str:
    where = f"{'<data_root>' if root is None else root}/fedcia/{src.location}"
    what = (f"the archive of the authors' {src.prefix}/<c>/{{train,valid,test}}_dataset.npy "
            if src.archive else
            "the authors' per-client folders <c>/{train,valid,test}_dataset.npy ")
    return f"put {what}({FEDCIA_SOURCE}, datasets/HiGSP/) at {where} (set FLOREC_DATA_DIR)"


def _locate(src: FedciaSource, root: Path | None) -> Path:
    path = None if root is None else root / "fedcia" / src.location
    if path is None or not (path.is_file() if src.archive else path.is_dir()):
        where = "no data folder is set" if path is None else f"{path} does not exist"
        raise DataError(f"dataset {src.name!r} is not on this machine ({where}); "
                        f"{_fix(src, root)}")
    return path


def _parse_path(rel: str, src: FedciaSource) -> tuple[int, int] | None:
    """``prefix/<c>/<part>_dataset.npy`` -> (client, part label); other paths -> None."""
    bits = rel.split("/")
    if len(bits) != 3 or bits[0] != src.prefix or not bits[1].isdigit():
        return None
    part = bits[2].removesuffix("_dataset.npy")
    return (int(bits[1]), PART_NAMES.index(part)) if part in PART_NAMES else None


def _array_files(path: Path, src: FedciaSource) -> Iterator[tuple[str, io.BufferedIOBase]]:
    """Yield ``(path in the checksum list, open binary file)`` for each array file, in turn."""
    if not src.archive:
        for file in sorted(path.glob("*/*_dataset.npy")):
            with open(file, "rb") as handle:
                yield f"{src.prefix}/{file.parent.name}/{file.name}", handle
        return
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("_dataset.npy"):
                    yield member.name.removeprefix("./"), tar.extractfile(member)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"archive {path} is unreadable ({' '.join(str(exc).split())[:100]}); "
                        f"{_fix(src, path.parent.parent)}") from None


def _verify(digests: dict[str, str], src: FedciaSource, path: Path) -> None:
    """Compare the digests of the files read with the embedded manifest digest."""
    manifest = "".join(f"{digests[p]}  {p}\n" for p in sorted(digests))
    if sha256_bytes(manifest.encode()) == src.manifest_sha256:
        return
    detail = f"{len(digests)} array files found, {src.n_files} expected"
    listed = path.parent / src.checksum_list
    if listed.is_file():
        pairs = [line.split(None, 1) for line in listed.read_text().splitlines()
                 if line.endswith("_dataset.npy")]
        expected = {rel: digest for digest, rel in pairs}
        text = "".join(f"{expected[p]}  {p}\n" for p in sorted(expected))
        if sha256_bytes(text.encode()) == src.manifest_sha256:  # the list itself is genuine
            bad = sorted(p for p in expected.keys() | digests.keys()
                         if expected.get(p) != digests.get(p))
            state = "is missing" if bad[0] not in digests else "fails its sha256 check"
            detail = f"{bad[0]} {state}" if bad[0] in expected else f"{bad[0]} is not expected"
    raise DataError(f"dataset {src.name!r} in {path} is not the authors' split ({detail}); "
                    f"{_fix(src, path.parent.parent)}")


def _read_npy(handle: io.BufferedIOBase, rel: str, src: FedciaSource, path: Path) -> np.ndarray:
    try:
        arr = np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{rel} in {path} is not a readable .npy file ({str(exc)[:80]}); "
                        f"{_fix(src, path.parent.parent)}") from None
    if arr.ndim != 2 or not np.isin(arr, (0, 1)).all():
        raise DataError(f"{rel} in {path} is not a 2-D 0/1 matrix; {_fix(src, path.parent.parent)}")
    return arr


def _read_titles(root: Path, src: FedciaSource, n_items: int) -> list[str] | None:
    """Titles of columns ``0..n_items-1`` (MovieLens id = column + 1) when the file is there."""
    folder_name, file_name, sep, known = src.titles
    folder = root / folder_name
    if not (folder / file_name).is_file():
        return None
    verify_files(folder, known, [file_name], fix=f"replace it with the GroupLens {folder_name} "
                 "file, or remove it (item titles are optional)")
    titles: dict[int, str] = {}
    for line in (folder / file_name).read_bytes().decode("latin-1").splitlines():
        fields = line.split(sep)
        if len(fields) >= 2 and fields[0].strip().isdigit():
            titles[int(fields[0])] = fields[1]
    return [titles.get(i + 1, "") for i in range(n_items)]


def load_fedcia(name: str, root: Path | None) -> Interactions:
    """Load a FedCIA dataset with the authors' split as ``presplit`` labels.

    Parameters
    ----------
    name : {"fedcia-ml100k", "fedcia-ml1m"}
        The dataset.
    root : Path or None
        The data root (holding ``fedcia/``); ``None`` means none is set.

    Returns
    -------
    Interactions
        All train, valid and test interactions sorted by (user, item); ``presplit`` holds the
        labels 0/1/2, ``has_time`` is False (``time`` is that order), ``n_users`` the rows of all
        clients, ``n_items`` the columns. ``user_ids``/``item_ids`` are ``0..n-1`` (MovieLens id
        minus 1). Item titles come from ``ml-100k/u.item`` (``ml-1m/movies.dat``) under the same
        root where present, else None.

    Raises
    ------
    DataError
        The data are missing, unreadable, malformed or not the authors' files (sha256).

    """
    src = _source(name)
    path = _locate(src, root)
    digests: dict[str, str] = {}
    parts: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}
    for rel, handle in _array_files(path, src):
        data = handle.read()
        digests[rel] = sha256_bytes(data)
        key = _parse_path(rel, src)
        if key is not None:
            arr = _read_npy(io.BytesIO(data), rel, src, path)
            rows, cols = np.nonzero(arr)
            parts[key] = (rows.astype(np.int64), cols.astype(np.int64), arr.shape)
            del arr, data
    _verify(digests, src, path)
    n_clients = 1 + max(c for c, _ in parts)
    shapes = {(c, label): parts[(c, label)][2] for c in range(n_clients) for label in range(3)}
    n_items = shapes[(0, 0)][1]
    if any(shapes[(c, label)] != shapes[(c, 0)] or shapes[(c, 0)][1] != n_items
           for c, label in shapes):
        raise DataError(f"the array shapes of {name!r} in {path} disagree; {_fix(src, root)}")
    sizes = [shapes[(c, 0)][0] for c in range(n_clients)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    keys = np.concatenate([offsets[c] + parts[(c, label)][0]
                           for c in range(n_clients) for label in range(3)]) * n_items
    keys += np.concatenate([parts[(c, label)][1] for c in range(n_clients) for label in range(3)])
    labels = np.concatenate([np.full(len(parts[(c, label)][0]), label, np.int8)
                             for c in range(n_clients) for label in range(3)])
    order = np.argsort(keys, kind="stable")
    keys, labels = keys[order], labels[order]
    if np.any(keys[1:] == keys[:-1]):
        raise DataError(f"{name!r} in {path} lists a (user, item) pair in two parts; "
                        f"{_fix(src, root)}")
    n_users = int(sum(sizes))
    return Interactions(
        user=keys // n_items, item=keys % n_items, time=np.arange(len(keys), dtype=np.float64),
        n_users=n_users, n_items=int(n_items), user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64), has_time=False,
        item_titles=_read_titles(root, src, n_items) if root is not None else None,
        presplit=labels, name=name)


def fedcia_client_sizes(name: str, data_dir: str | Path | None = None) -> list[int]:
    """Users per client of the authors' split (the rows of each ``train_dataset.npy``).

    Only the array headers are read (the archive is still decompressed once); no checksums.

    Parameters
    ----------
    name : {"fedcia-ml100k", "fedcia-ml1m"}
        The dataset.
    data_dir : str or Path, optional
        The data root; default ``$FLOREC_DATA_DIR``.

    Returns
    -------
    list of int
        ``sizes[c]`` = users of client ``c``; client ``c`` holds users
        ``sum(sizes[:c]) .. sum(sizes[:c+1]) - 1``.

    Raises
    ------
    DataError
        The data are missing or unreadable.

    """
    from florec.recdata.datasets import resolve_data_root

    src = _source(name)
    path = _locate(src, resolve_data_root(data_dir))
    rows: dict[int, int] = {}
    for rel, handle in _array_files(path, src):
        key = _parse_path(rel, src)
        if key is None or key[1] != 0:
            continue
        try:
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}[version]
            rows[key[0]] = int(reader(handle)[0][0])
        except (ValueError, KeyError, IndexError, EOFError) as exc:
            raise DataError(f"{rel} in {path} is not a readable .npy file ({str(exc)[:80]}); "
                            f"{_fix(src, path.parent.parent)}") from None
    if sorted(rows) != list(range(len(rows))) or not rows:
        raise DataError(f"the clients of {name!r} in {path} are not numbered 0..n-1; "
                        f"{_fix(src, path.parent.parent)}")
    return [rows[c] for c in range(len(rows))]
