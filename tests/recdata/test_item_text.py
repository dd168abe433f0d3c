import pytest

from florec.recdata.datasets import load_dataset
from florec.recdata.errors import DataError
from florec.recdata.item_text import (
    ItemText,
    _amazon_text,
    item_text_string,
    load_item_text,
    split_item_ids,
)
from florec.recdata.store import get_split


def test_ml100k_titles_and_genres_follow_the_internal_ids(shared_data):
    inter = load_dataset("ml-100k", shared_data)
    texts = load_item_text("ml-100k", shared_data, inter.item_ids)
    assert len(texts) == inter.n_items == 1682
    toy = texts[list(inter.item_ids).index(1)]
    assert toy == ItemText("Toy Story (1995)", ["Animation", "Children's", "Comedy"])
    assert item_text_string(toy) == "Toy Story (1995) | Genres: Animation, Children's, Comedy"
    assert [t.title for t in texts] == [t.strip() for t in inter.item_titles]


def test_amazon_text_splits_title_categories_and_brand():
    t = _amazon_text("Grizzly G1064 Cross-Sliding Vise. Industrial & Scientific Bench Vises. "
                     "Grizzly. ")
    assert t == ItemText("Grizzly G1064 Cross-Sliding Vise", ["Industrial & Scientific Bench "
                                                              "Vises"], "Grizzly", "Categories")
    assert item_text_string(t).endswith("| Brand: Grizzly")
    dotted = _amazon_text("No. 2 Pencil. Office. Dixon. ")
    assert dotted.title == "No. 2 Pencil" and dotted.brand == "Dixon"


def test_synthetic_titles_carry_their_cluster_as_genre(tmp_path):
    params = {"n_users": 20, "n_items": 30, "mean_interactions": 5}
    split, path = get_split("synthetic", "loo", 0, synthetic=params)
    texts = load_item_text("synthetic", None, split_item_ids(path, "synthetic"),
                           synthetic=params)
    assert len(texts) == split.n_items == 30
    assert texts[17].title == "Item 17" and texts[17].genres[0].startswith("genre_")


def test_recbole_item_files_give_titles_and_unknown_ids_a_placeholder(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\tbrand:token\n"
                                      "i1\tRed Pen\tBic\n")
    texts = load_item_text(f"recbole:{folder}", None, ["i1", "i2"])
    assert texts[0] == ItemText("Red Pen", [], "Bic", "Categories")
    assert texts[1].title == "Item i2"


def test_a_dataset_without_text_is_a_data_error():
    with pytest.raises(DataError, match="has no item text"):
        load_item_text("fedcia-bx", None, [1])
