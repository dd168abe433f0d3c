import numpy as np
import pytest

from florec.recdata.errors import ConfigError
from florec.recdata.interactions import Interactions
from florec.recdata.splits import make_split, ratio_counts, read_split, write_split
from florec.recdata.synthetic import generate_synthetic


def toy() -> Interactions:
    # user 0: 4 events, two at the same second (file order breaks the tie); user 1: 2 events
    return Interactions.from_raw(
        np.array([0, 0, 0, 0, 1, 1]), np.array([10, 11, 12, 13, 10, 12]),
        np.array([5.0, 1.0, 9.0, 9.0, 1.0, 2.0]))


def test_loo_puts_last_event_in_test_and_second_last_in_valid():
    split = make_split(toy(), "loo", seed=0)
    users, items, _ = split.parts["test"]
    assert users.tolist() == [0] and items.tolist() == [3]  # raw 13: later in file at t=9
    assert split.parts["valid"][1].tolist() == [2]
    assert sorted(split.parts["train"][1][split.parts["train"][0] == 0].tolist()) == [0, 1]


def test_loo_keeps_users_with_fewer_than_three_events_in_train():
    split = make_split(toy(), "loo", seed=0)
    assert 1 not in split.parts["test"][0] and 1 not in split.parts["valid"][0]
    assert (split.parts["train"][0] == 1).sum() == 2


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (1, 0, 1)), (5, (3, 1, 1)),
                                         (10, (8, 1, 1)), (25, (21, 2, 2))])
def test_ratio_counts_follow_recbole_rule(n, expected):
    got = tuple(int(a[0]) for a in ratio_counts(np.array([n]), (0.8, 0.1, 0.1)))
    assert got == expected


@pytest.mark.parametrize("kind", ["loo", "ratio", "global", "ratio-fs"])
def test_split_covers_every_interaction_once_and_is_seeded(kind):
    inter = generate_synthetic(n_users=80, n_items=50, seed=1)
    a, b = make_split(inter, kind, seed=3), make_split(inter, kind, seed=3)
    total = sum(len(p[0]) for p in a.parts.values())
    assert total == len(inter)
    pairs = np.concatenate([p[0] * 1000 + p[1] for p in a.parts.values()])
    assert len(np.unique(pairs)) == len(inter)
    for part in a.parts:
        np.testing.assert_array_equal(a.parts[part][1], b.parts[part][1])
    if kind != "loo":
        c = make_split(inter, kind, seed=4)
        assert not np.array_equal(a.parts["test"][1], c.parts["test"][1])


def test_fair_sampling_split_puts_a_fifth_in_test_and_a_tenth_of_the_rest_in_valid():
    inter = Interactions.from_raw(np.zeros(50, np.int64), np.arange(50), np.arange(50.0))
    split = make_split(inter, "ratio-fs", seed=0)
    sizes = [len(split.parts[p][0]) for p in ("train", "valid", "test")]
    assert sizes == [36, 4, 10]  # 50 -> test 10; 40 -> valid 4, train 36


def test_unknown_split_kind_names_the_choices():
    with pytest.raises(ConfigError, match="loo, ratio, global"):
        make_split(toy(), "time", seed=0)


def test_split_files_round_trip_with_recbole_header(tmp_path):
    inter = generate_synthetic(n_users=30, n_items=20, seed=0)
    split = make_split(inter, "ratio", seed=0)
    write_split(split, tmp_path / "s", "synthetic", inter)
    header = (tmp_path / "s" / "synthetic.train.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    back = read_split(tmp_path / "s", "synthetic")
    assert (back.n_users, back.n_items) == (split.n_users, split.n_items)
    for part in split.parts:
        for a, b in zip(split.parts[part], back.parts[part], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_mask_for_test_holds_train_and_valid():
    split = make_split(generate_synthetic(n_users=30, n_items=20, seed=0), "loo", seed=0)
    mask = split.mask_for("test")
    assert mask.nnz == split.matrix("train").nnz + split.matrix("valid").nnz


def presplit_toy() -> Interactions:
    labels = np.array([0, 0, 1, 2, 0, 2])
    return Interactions.from_raw(
        np.array([0, 0, 0, 0, 1, 1]), np.array([10, 11, 12, 13, 10, 12]), None,
        name="toy", presplit=labels)


def test_given_split_uses_the_shipped_labels():
    split = make_split(presplit_toy(), "given", seed=0)
    assert split.parts["train"][1].tolist() == [0, 1, 0]
    assert split.parts["valid"][1].tolist() == [2]
    assert split.parts["test"][0].tolist() == [0, 1] and split.parts["test"][1].tolist() == [3, 2]


def test_loo_on_a_presplit_dataset_keeps_the_given_split():
    a, b = make_split(presplit_toy(), "loo", seed=0), make_split(presplit_toy(), "given", seed=0)
    for part in a.parts:
        np.testing.assert_array_equal(a.parts[part][1], b.parts[part][1])


def test_given_split_without_shipped_split_is_a_one_line_config_error():
    inter = generate_synthetic(n_users=30, n_items=20, seed=0)
    with pytest.raises(ConfigError) as err:
        make_split(inter, "given", seed=0)
    msg = str(err.value)
    assert f"dataset {inter.name!r} ships no split; use loo, ratio or global" in msg
    assert "\n" not in msg


def test_loo_without_timestamps_warns_and_splits_in_file_order(caplog):
    inter = Interactions.from_raw(np.array([0, 0, 0, 0]), np.array([5, 3, 9, 1]), None,
                                  name="untimed")
    with caplog.at_level("WARNING", logger="florec.recdata.splits"):
        split = make_split(inter, "loo", seed=0)
    assert "no timestamps" in caplog.text and "split='ratio'" in caplog.text
    assert split.parts["test"][1].tolist() == [inter.item[3]]


def test_loo_with_timestamps_does_not_warn(caplog):
    inter = Interactions.from_raw(np.array([0, 0, 0]), np.array([1, 2, 3]),
                                  np.array([1.0, 2.0, 3.0]))
    with caplog.at_level("WARNING", logger="florec.recdata.splits"):
        make_split(inter, "loo", seed=0)
    assert "no timestamps" not in caplog.text
