import numpy as np
import pytest

from florec.recdata.datasets import load_dataset
from florec.recdata.errors import DataError
from florec.recdata.splits import make_split, write_split
from florec.recdata.store import get_split
from florec.recdata.synthetic import generate_synthetic


def test_a_florec_split_read_back_from_recbole_files_is_the_same_split(tmp_path):
    inter = generate_synthetic(n_users=30, n_items=40, seed=2)
    split = make_split(inter, "ratio", seed=1)
    write_split(split, tmp_path / "mine", "mine", inter)
    back, _ = get_split(f"recbole:{tmp_path / 'mine'}", "given")
    assert (back.n_users, back.n_items) == (split.n_users, split.n_items)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.matrix(part).toarray(), split.matrix(part).toarray())


def test_a_whole_inter_file_with_string_tokens_and_ratings_keeps_ratings_above_the_threshold(
        tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "ann\tpen\t5\t1\nann\tink\t2\t2\nbob\tpen\t4\t3\nbob\tpad\t5\t4\nbob\tpen\t5\t5\n")
    inter = load_dataset(f"recbole:{folder}", min_rating=4.0)
    assert (inter.n_users, len(inter)) == (2, 3)  # ann-ink (2) dropped, bob-pen kept once
    assert inter.presplit is None and inter.has_time
    split, path = get_split(f"recbole:{folder}", "loo", min_rating=4.0)
    assert path.name.startswith("loo") and "recbole-shop-" in str(path)


def test_a_folder_without_atomic_files_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"holds neither empty.inter nor") as err:
        (tmp_path / "empty").mkdir()
        load_dataset(f"recbole:{tmp_path / 'empty'}")
    assert "\n" not in str(err.value)


def test_a_file_without_user_and_item_columns_is_named(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("uid:token\tiid:token\n1\t2\n")
    with pytest.raises(DataError, match=r"bad.inter has no user_id and item_id columns"):
        load_dataset(f"recbole:{folder}")


HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _write_inter(tmp_path, body: bytes):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "bad.inter").write_bytes(HEADER.encode() + body)
    return f"recbole:{folder}"


@pytest.mark.parametrize(("body", "named"), [
    (b"1\t1\t10\n1\t2\tnan\n2\t1\t12\n", r"line 3 has timestamp='nan', not a finite number"),
    (b"1\t1\t10\n1\t2\tinf\n2\t1\t-inf\n", r"line 3 has timestamp='inf'.*\(2 such lines\)"),
    (b"1\t1\t10\n1\t2\tlater\n", r"line 3 has timestamp='later', not a number"),
    (b"1\t1\t10\n2\t1\t1200", r"line 3 has no line end, so the file may be cut short"),
    ("1\t1\t10\nJos\xe9\t2\t11\n".encode("latin-1"), r"line 3 is not UTF-8 \(byte 0xe9\)"),
    (b"1\t1\t10\n\t2\t11\n", r"line 3 has an empty user_id"),
])
def test_bad_values_in_a_recbole_file_are_one_line_naming_the_line(tmp_path, body, named):
    """Issue 11 §5: NaN/inf times, a cut last line and Latin-1 bytes were read or crashed."""
    with pytest.raises(DataError, match=named) as err:
        load_dataset(_write_inter(tmp_path, body))
    assert "bad.inter" in str(err.value) and "\n" not in str(err.value)


def test_a_whole_file_still_reads_after_the_checks(tmp_path):
    inter = load_dataset(_write_inter(tmp_path, b"1\t1\t10\n1\t2\t11.5\n2\t1\t12\n"))
    assert len(inter) == 3 and inter.has_time
    np.testing.assert_allclose(np.sort(inter.time), [10.0, 11.5, 12.0])


def overlapping_split(folder):
    """ann-pen in train and valid, ann-ink in train and test, bob-pad in valid and test."""
    folder.mkdir()
    head = "user_id:token\titem_id:token\n"
    (folder / f"{folder.name}.train.inter").write_text(head + "ann\tpen\nann\tink\ncat\tpen\n")
    (folder / f"{folder.name}.valid.inter").write_text(head + "ann\tpen\nbob\tpad\ncat\tink\n")
    (folder / f"{folder.name}.test.inter").write_text(
        head + "ann\tink\nbob\tpad\nbob\tink\ncat\tpad\n")
    return folder


def test_given_rows_repeating_an_earlier_part_are_dropped_counted_and_reported(tmp_path, caplog):
    import logging

    from florec.recdata.recbole_io import data_notes
    from florec.recdata.runconfig import parse_run_config

    folder = overlapping_split(tmp_path / "shop")
    with caplog.at_level(logging.WARNING):
        split, _ = get_split(f"recbole:{folder}", "given")
    sizes = [len(split.parts[p][0]) for p in ("train", "valid", "test")]
    assert sizes == [3, 2, 2]  # valid loses ann-pen; test loses ann-ink (train), bob-pad (valid)
    assert "1 valid and 2 test rows repeat" in caplog.text
    assert len([r for r in caplog.records if "repeat" in r.getMessage()]) == 1
    cfg = parse_run_config({"dataset": f"recbole:{folder}", "split": "given"})
    assert data_notes(cfg) == {"given_overlap_dropped": {"valid": 1, "test": 2}}
    assert data_notes(parse_run_config({"dataset": "synthetic"})) == {}


def test_strict_refuses_split_files_whose_parts_overlap(tmp_path):
    folder = overlapping_split(tmp_path / "shop")
    with pytest.raises(DataError, match=r"1 valid and 2 test rows repeat.*drop \?strict"):
        load_dataset(f"recbole:{folder}?strict")


def test_a_central_run_on_given_files_reports_the_dropped_rows_in_results_json(tmp_path):
    import json

    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central import run_central

    folder = overlapping_split(tmp_path / "shop")
    cfg = parse_run_config({"dataset": f"recbole:{folder}", "split": "given", "model": "pop"})
    run_central(cfg, 0, 16, tmp_path / "out")
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert run["given_overlap_dropped"] == {"valid": 1, "test": 2}
