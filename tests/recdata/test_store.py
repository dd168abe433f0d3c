"""The split cache is keyed by the sources' content, data root, loader version and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from florec.recdata import store
from florec.recdata.datasets import source_files
from florec.recdata.errors import DataError
from florec.recdata.store import get_split, source_manifest


def _recbole(tmp_path: Path, users: int, items_per_user: int) -> Path:
    folder = tmp_path / "mini"
    folder.mkdir(exist_ok=True)
    rows = [f"{u}\t{i}\t{u * 100 + i}.0" for u in range(users) for i in range(items_per_user)]
    (folder / "mini.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                       + "\n".join(rows) + "\n")
    return folder


def _size(split) -> int:
    return sum(len(part[0]) for part in split.parts.values())


def test_an_edited_source_file_builds_a_new_split(tmp_path: Path) -> None:
    """Issue 11 §4: the cache was keyed by name only, so an edited .inter reused the old split."""
    folder = _recbole(tmp_path, users=20, items_per_user=6)
    name = f"recbole:{folder}"
    first, first_dir = get_split(name, "loo")
    assert _size(first) == 120
    _recbole(tmp_path, users=20, items_per_user=4)  # edited in place, same name and path
    second, second_dir = get_split(name, "loo")
    assert _size(second) == 80 and second_dir != first_dir
    manifest = json.loads((second_dir / "source.json").read_text())
    assert manifest["files"] == {"mini.inter": store.file_sha256(folder / "mini.inter")}
    assert _size(get_split(name, "loo")[0]) == 80  # and it stays the new one


def test_the_key_covers_loader_version_root_and_split_parameters(tmp_path: Path,
                                                                 monkeypatch) -> None:
    folder = _recbole(tmp_path, users=10, items_per_user=5)
    name = f"recbole:{folder}"
    base = store.manifest_key(source_manifest(name, "ratio", 0))
    assert store.manifest_key(source_manifest(name, "ratio", 1)) != base
    assert store.manifest_key(source_manifest(name, "loo", 0)) != base
    monkeypatch.setattr(store, "LOADER_VERSION", store.LOADER_VERSION + 1)
    assert store.manifest_key(source_manifest(name, "ratio", 0)) != base
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy = _recbole(other, users=10, items_per_user=5)
    assert source_manifest(f"recbole:{copy}", "ratio", 0)["data_root"] != \
        source_manifest(name, "ratio", 0)["data_root"]


def test_a_missing_data_root_fails_even_with_a_cached_split(tmp_path: Path, monkeypatch) -> None:
    params = {"n_users": 20, "n_items": 30, "mean_interactions": 5, "seed": 0}
    get_split("synthetic", "loo", synthetic=params)  # cached now
    monkeypatch.setenv("FLOREC_DATA_DIR", str(tmp_path / "no-such-folder"))
    with pytest.raises(DataError, match="no-such-folder.*does not exist"):
        get_split("synthetic", "loo", synthetic=params)


def test_registered_datasets_hash_the_files_they_read(shared_data: Path) -> None:
    root, files = source_files("ml-100k", shared_data)
    assert root == shared_data.resolve()
    assert {"u.data", "u.item"} <= {f.name for f in files}
    manifest = source_manifest("ml-100k", "loo", 0, str(shared_data))
    assert manifest["files"]["ml-100k/u.data"] == \
        "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
