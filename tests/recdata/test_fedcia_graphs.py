import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from florec.recdata.datasets import dataset_names, load_dataset
from florec.recdata.errors import DataError
from florec.recdata.splits import make_split


def test_fedcia_graph_datasets_are_registered():
    assert {"fedcia-bx", "fedcia-beauty", "fedcia-netflix"} <= set(dataset_names())


def test_fedcia_bx_loads_the_training_graph_with_the_readme_counts(shared_data):
    inter = load_dataset("fedcia-bx", shared_data)
    assert (inter.n_users, inter.n_items, len(inter)) == (18_513, 19_997, 347_150)
    assert not inter.has_time and inter.presplit is None
    first = sp.load_npz(shared_data / "fedcia/bx/0/norm_adj.npz").tocsr()
    n0 = first.shape[0] - 19_997
    rows, cols = first[:n0, n0:].nonzero()
    mine = inter.user < n0
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == \
        sorted(zip(inter.user[mine].tolist(), inter.item[mine].tolist(), strict=True))


def test_fedcia_bx_takes_a_seeded_per_user_split(shared_data):
    split = make_split(load_dataset("fedcia-bx", shared_data), "ratio", seed=0)
    sizes = [len(split.parts[p][0]) for p in ("train", "valid", "test")]
    assert sum(sizes) == 347_150 and sizes[1] > 20_000 and sizes[2] > 20_000


def test_missing_graph_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"fedcia-bx.*not on this machine.*norm_adj.npz") as err:
        load_dataset("fedcia-bx", tmp_path)
    assert "\n" not in str(err.value)


def test_altered_graph_file_is_named_in_the_checksum_error(shared_data, tmp_path):
    dst = tmp_path / "fedcia"
    shutil.copytree(shared_data / "fedcia/bx", dst / "bx")
    shutil.copy(shared_data / "fedcia/bx.sha256", dst / "bx.sha256")
    path = dst / "bx/7/norm_adj.npz"
    path.chmod(0o644)
    adj = sp.load_npz(path).tocsr()
    adj.data = adj.data * np.float32(2)
    sp.save_npz(path, adj)
    with pytest.raises(DataError, match=r"bx/7/norm_adj.npz fails its sha256 check"):
        load_dataset("fedcia-bx", tmp_path)
