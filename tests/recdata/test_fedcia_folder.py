"""``fedcia:<folder>``: the FedCIA authors' per-client layout, generated small, as a dataset."""

import hashlib
import logging

import numpy as np
import pytest

from florec.recdata.datasets import load_dataset, source_files
from florec.recdata.errors import DataError
from florec.recdata.fedcia_folder import load_fedcia_folder
from florec.recdata.recbole_io import storage_name

N_ITEMS = 7


def write_client(folder, c, rows, parts=("train", "valid", "test")):
    """Client ``c`` with ``rows`` users: user u has item (u + k) % 7 in part k."""
    (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(parts):
        arr = np.zeros((rows, N_ITEMS), np.int64)
        arr[np.arange(rows), (np.arange(rows) + k + c) % N_ITEMS] = 1
        np.save(folder / str(c) / f"{part}_dataset.npy", arr)


def authors_folder(tmp_path, clients=(2, 3, 2)):
    folder = tmp_path / "lastfm"
    for c, rows in enumerate(clients):
        write_client(folder, c, rows)
    return folder


def test_clients_are_read_in_numeric_order_with_their_split(tmp_path):
    folder = authors_folder(tmp_path)
    write_client(folder, 10, 1)  # "10" sorts after "2" numerically, before it as text
    inter = load_dataset(f"fedcia:{folder}")
    assert (inter.n_users, inter.n_items) == (2 + 3 + 2 + 1, N_ITEMS)
    assert not inter.has_time and np.bincount(inter.presplit).tolist() == [8, 8, 8]
    # the user of client 10 is the last one (7); its train item is (0 + 0 + 10) % 7 = 3
    last = (inter.user == 7) & (inter.presplit == 0)
    assert inter.item[last].tolist() == [3]
    # client 1's first user is global user 2; its test item is (0 + 2 + 1) % 7 = 3
    assert inter.item[(inter.user == 2) & (inter.presplit == 2)].tolist() == [3]


def test_a_client_missing_a_split_file_is_named_and_refused_or_skipped(tmp_path, caplog):
    folder = authors_folder(tmp_path)
    (folder / "1" / "valid_dataset.npy").unlink()
    with pytest.raises(DataError, match=r"1 of 3 clients lack split files \(1: valid\).*"
                                        r"skip-missing"):
        load_fedcia_folder(f"fedcia:{folder}")
    with caplog.at_level(logging.WARNING):
        inter = load_fedcia_folder(f"fedcia:{folder}?skip-missing")
    assert inter.n_users == 4 and "left out" in caplog.text
    assert storage_name(f"fedcia:{folder}") != storage_name(f"fedcia:{folder}?skip-missing")


def test_the_checksum_list_is_checked_when_present(tmp_path):
    folder = authors_folder(tmp_path, clients=(2, 2))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(tmp_path)}\n"
             for p in sorted(folder.rglob("*.npy"))]
    (tmp_path / "lastfm.sha256").write_text("".join(lines))
    assert load_fedcia_folder(f"fedcia:{folder}").n_users == 4
    assert tmp_path / "lastfm.sha256" in source_files(f"fedcia:{folder}")[1]
    write_client(folder, 1, 3)  # a changed file
    with pytest.raises(DataError, match="lastfm/1/train_dataset.npy fails its sha256"):
        load_fedcia_folder(f"fedcia:{folder}")


def test_a_pair_in_two_parts_and_disagreeing_columns_are_refused(tmp_path):
    folder = authors_folder(tmp_path, clients=(2,))
    np.save(folder / "0" / "test_dataset.npy", np.load(folder / "0" / "train_dataset.npy"))
    with pytest.raises(DataError, match="pair in two parts"):
        load_fedcia_folder(f"fedcia:{folder}")
    np.save(folder / "0" / "test_dataset.npy", np.zeros((2, N_ITEMS + 1), np.int64))
    with pytest.raises(DataError, match="has shape"):
        load_fedcia_folder(f"fedcia:{folder}")


def test_a_folder_without_client_folders_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no numbered client folders"):
        load_dataset(f"fedcia:{tmp_path}")


def test_the_given_split_of_a_fedcia_folder_is_cached_and_read_back(tmp_path):
    from florec.recdata.store import get_split

    folder = authors_folder(tmp_path)
    split, path = get_split(f"fedcia:{folder}", "given")
    assert path.parent.name.startswith("fedcia-lastfm-")
    assert [len(split.parts[p][0]) for p in ("train", "valid", "test")] == [7, 7, 7]
    assert (split.n_users, split.n_items) == (7, N_ITEMS)
