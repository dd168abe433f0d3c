import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from florec.recdata.datasets import dataset_names, load_dataset
from florec.recdata.errors import DataError
from florec.recdata.fedcia_data import fedcia_client_sizes, load_fedcia
from florec.recdata.partition import partition_users
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.store import get_split

ML100K_COUNTS = (943, 1682, [72000, 8000, 20000])
ML1M_COUNTS = (6040, 3952, [720150, 80017, 200042])


def client_arrays(root: Path, part: str) -> np.ndarray:
    folder = root / "fedcia" / "ml100k"
    return np.vstack([np.load(folder / str(c) / f"{part}_dataset.npy") for c in range(100)])


def pairs(user: np.ndarray, item: np.ndarray) -> set:
    return set(zip(user.tolist(), item.tolist(), strict=True))


def test_fedcia_datasets_are_registered():
    assert {"fedcia-ml100k", "fedcia-ml1m"} <= set(dataset_names())


def test_fedcia_ml100k_loads_with_the_authors_counts(shared_data):
    inter = load_dataset("fedcia-ml100k", shared_data)
    n_users, n_items, parts = ML100K_COUNTS
    assert (inter.n_users, inter.n_items, len(inter)) == (n_users, n_items, 100_000)
    assert np.bincount(inter.presplit).tolist() == parts
    assert not inter.has_time and inter.name == "fedcia-ml100k"
    assert inter.item_titles[0] == "Toy Story (1995)" and len(inter.item_titles) == n_items
    # test users: only 1-462 (the shape of GroupLens u1.test), 459 of them with items
    assert np.unique(inter.user[inter.presplit == 2]).tolist()[-1] == 461


def test_fedcia_ml100k_holds_the_movielens_pairs_with_ids_minus_one(shared_data):
    fed = load_dataset("fedcia-ml100k", shared_data)
    ml = load_dataset("ml-100k", shared_data)
    assert pairs(fed.user, fed.item) == pairs(ml.user_ids[ml.user] - 1, ml.item_ids[ml.item] - 1)


def test_fedcia_ml1m_loads_from_the_archive_one_client_at_a_time(shared_data):
    tracemalloc.start()
    try:
        inter = load_dataset("fedcia-ml1m", shared_data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n_users, n_items, parts = ML1M_COUNTS
    assert (inter.n_users, inter.n_items, len(inter)) == (n_users, n_items, 1_000_209)
    assert np.bincount(inter.presplit).tolist() == parts
    assert len(np.unique(inter.item)) == 3706
    assert inter.item_titles[0] == "Toy Story (1995)"
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB: the dense arrays are 578 MB"


def test_fedcia_ml1m_holds_the_movielens_pairs_with_ids_minus_one(shared_data):
    fed = load_dataset("fedcia-ml1m", shared_data)
    ml = load_dataset("ml-1m", shared_data)
    assert pairs(fed.user, fed.item) == pairs(ml.user_ids[ml.user] - 1, ml.item_ids[ml.item] - 1)


@pytest.mark.parametrize("name, sizes", [("fedcia-ml100k", [9] * 99 + [52]),
                                         ("fedcia-ml1m", [60] * 99 + [100])])
def test_every_user_of_fedcia_client_c_lands_in_floor_bucket_c(shared_data, name, sizes):
    assert fedcia_client_sizes(name, shared_data) == sizes
    cfg = parse_run_config({"dataset": name, "split": "given", "partition": "floor",
                            "num-nodes": 100})
    buckets = partition_users(sum(sizes), num_nodes=cfg.num_nodes, mode=cfg.partition)
    offsets = np.cumsum([0] + sizes)
    for c, bucket in enumerate(buckets):
        assert bucket.tolist() == list(range(offsets[c], offsets[c + 1]))


def test_given_split_labels_equal_the_file_contents(shared_data):
    split = make_split(load_dataset("fedcia-ml100k", shared_data), "given", seed=0)
    for part in ("train", "valid", "test"):
        expected = client_arrays(shared_data, part)
        np.testing.assert_array_equal(split.matrix(part).toarray(), expected)


def test_given_split_survives_the_split_store(shared_data):
    split, path = get_split("fedcia-ml100k", "given", 0, str(shared_data))
    assert (split.n_users, split.n_items) == (943, 1682)
    assert [len(split.parts[p][0]) for p in ("train", "valid", "test")] == [72000, 8000, 20000]
    assert path.name.startswith("given-seed0")  # the store may append a source hash


@pytest.mark.parametrize("name, fragment", [("fedcia-ml100k", "fedcia/ml100k"),
                                            ("fedcia-ml1m", "fedcia/ml1m.tar.gz")])
def test_missing_fedcia_data_is_a_one_line_error_naming_folder_and_fix(tmp_path, name, fragment):
    for call in (lambda: load_dataset(name, tmp_path), lambda: fedcia_client_sizes(name, tmp_path)):
        with pytest.raises(DataError) as err:
            call()
        msg = str(err.value)
        assert fragment in msg and "does not exist" in msg and "put " in msg and "\n" not in msg
    with pytest.raises(DataError, match="no data folder is set"):
        load_fedcia(name, None)


def fake_ml100k(shared: Path, tmp: Path, *, bad_client: int | None, drop_client: int | None,
                with_list: bool) -> Path:
    """A data root whose fedcia/ml100k links to the shared files, one of them altered."""
    src, dst = shared / "fedcia" / "ml100k", tmp / "fedcia" / "ml100k"
    for c in range(100):
        if c == drop_client:
            continue
        (dst / str(c)).mkdir(parents=True)
        for part in ("train", "valid", "test"):
            name = f"{part}_dataset.npy"
            if c == bad_client and part == "test":
                arr = np.load(src / str(c) / name)
                arr[0, 0] = 1 - arr[0, 0]
                np.save(dst / str(c) / name, arr)
            else:
                (dst / str(c) / name).symlink_to(src / str(c) / name)
    if with_list:
        (tmp / "fedcia" / "ml100k.sha256").symlink_to(shared / "fedcia" / "ml100k.sha256")
    return tmp


def test_altered_client_file_is_named_in_the_checksum_error(shared_data, tmp_path):
    root = fake_ml100k(shared_data, tmp_path, bad_client=3, drop_client=None, with_list=True)
    with pytest.raises(DataError, match=r"ml100k/3/test_dataset.npy fails its sha256 check"):
        load_dataset("fedcia-ml100k", root)


def test_missing_client_is_named_in_the_checksum_error(shared_data, tmp_path):
    root = fake_ml100k(shared_data, tmp_path, bad_client=None, drop_client=99, with_list=True)
    with pytest.raises(DataError, match=r"ml100k/99/test_dataset.npy is missing"):
        load_dataset("fedcia-ml100k", root)


def test_altered_file_without_checksum_list_still_fails(shared_data, tmp_path):
    root = fake_ml100k(shared_data, tmp_path, bad_client=5, drop_client=None, with_list=False)
    with pytest.raises(DataError, match="not the authors' split") as err:
        load_dataset("fedcia-ml100k", root)
    assert "\n" not in str(err.value)
