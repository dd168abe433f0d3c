"""Time-ordered sequences and Oracle4Rec-style samples built from a split."""

import numpy as np
import pytest

from florec.recdata.errors import ConfigError
from florec.recdata.sequences import (
    UserSequences,
    future_samples,
    past_samples,
    sample_negatives,
    sample_positions,
)
from florec.recdata.splits import Split, make_split
from florec.recdata.synthetic import generate_synthetic


def tiny_split():
    # user 0: items 5,3,7 (train, times 1,2,2 -> file order breaks the tie), 8 valid, 9 test
    # user 1: items 1,2 train (given out of time order), 4 valid, 0 test
    train = (np.array([0, 0, 0, 1, 1]), np.array([5, 3, 7, 2, 1]),
             np.array([1.0, 2.0, 2.0, 6.0, 5.0]))
    valid = (np.array([0, 1]), np.array([8, 4]), np.array([3.0, 7.0]))
    test = (np.array([0, 1]), np.array([9, 0]), np.array([4.0, 8.0]))
    return Split(parts={"train": train, "valid": valid, "test": test}, n_users=2, n_items=10)


def test_train_inputs_are_time_ordered_left_padded_tokens():
    seqs = UserSequences.from_split(tiny_split())
    np.testing.assert_array_equal(seqs.inputs(np.array([0, 1]), "train", 4),
                                  [[0, 6, 4, 8], [0, 0, 2, 3]])


def test_test_input_is_train_plus_the_valid_item():
    seqs = UserSequences.from_split(tiny_split())
    np.testing.assert_array_equal(seqs.inputs(np.array([0, 1]), "test", 4),
                                  [[6, 4, 8, 9], [0, 2, 3, 5]])
    np.testing.assert_array_equal(seqs.inputs(np.array([0]), "valid", 2), [[4, 8]])


def test_loo_sequences_match_the_split_on_generated_data():
    split = make_split(generate_synthetic(n_users=30, n_items=40, seed=1), "loo", 0)
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    train, test = seqs.inputs(users, "train", 60), seqs.inputs(users, "test", 60)
    valid_item = split.matrix("valid").tocsr()
    for u in users:
        if valid_item[u].nnz:
            assert test[u, -1] == valid_item[u].indices[0] + 1
            np.testing.assert_array_equal(test[u, :-1], train[u, 1:])
        assert set(train[u][train[u] > 0] - 1) == set(split.matrix("train")[u].indices)


def test_unknown_part_is_a_config_error():
    with pytest.raises(ConfigError, match="train, valid or test"):
        UserSequences.from_split(tiny_split()).inputs(np.array([0]), "all", 3)


def test_past_samples_are_the_window_prefix_before_each_target():
    windows = np.array([[0, 0, 1, 2, 3, 4]])
    rows, cols = sample_positions(windows)
    seq, pos = past_samples(windows, rows, cols)
    np.testing.assert_array_equal(pos, [1, 2, 3, 4])
    np.testing.assert_array_equal(seq, [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1],
                                        [0, 0, 0, 0, 1, 2], [0, 0, 0, 1, 2, 3]])


def test_future_samples_follow_the_oracle4rec_code():
    windows = np.array([[0, 1, 2, 3, 4, 5, 6]])  # L=7, F=2: 5 past slots
    rows, cols = np.array([0, 0, 0]), np.array([3, 5, 6])  # targets 3, 5, 6
    seq, tgt = future_samples(windows, rows, cols, 2)
    # target 3: past [0,0,0,1,2], future [3,4]; targets shifted: [0,0,1,2,3,4,5]
    np.testing.assert_array_equal(seq[0], [0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(tgt[0], [0, 0, 1, 2, 3, 4, 5])
    # target 5: the window's last item 6 is never an input; it is the last target
    np.testing.assert_array_equal(seq[1], [0, 1, 2, 3, 4, 5, 0])
    np.testing.assert_array_equal(tgt[1], [1, 2, 3, 4, 5, 6, 0])
    # target 6 (last): the input holds 6 itself, no future target
    np.testing.assert_array_equal(seq[2], [1, 2, 3, 4, 5, 6, 0])
    np.testing.assert_array_equal(tgt[2], [2, 3, 4, 5, 6, 0, 0])
    # the first of the last F+1 targets is the past sample's target
    np.testing.assert_array_equal(tgt[:, -3], windows[0, cols])


def test_future_length_outside_range_is_a_config_error():
    with pytest.raises(ConfigError, match="oracle-future"):
        future_samples(np.zeros((1, 5), dtype=np.int64), np.array([0]), np.array([4]), 4)


def test_negatives_avoid_the_window_items():
    rng = np.random.default_rng(0)
    windows = np.array([[1, 2, 3, 4], [0, 0, 5, 6]])
    rows = np.array([0, 1, 0, 1] * 50)
    neg = sample_negatives(windows, rows, 8, (len(rows), 3), rng)
    assert neg.min() >= 1 and neg.max() <= 8
    for r, row in zip(rows, neg, strict=True):
        assert not set(row) & set(windows[r][windows[r] > 0])


def test_amazon_test_inputs_are_the_shipped_histories(shared_data):
    """Real data: the test input (train + valid item) equals Scientific.test.inter's history.

    The loader keeps one interaction per (user, item) (the first), so repeats are dropped.
    """
    from florec.recdata.datasets import load_dataset
    from florec.recdata.store import get_split

    inter = load_dataset("amazon-scientific", str(shared_data))
    split, _ = get_split("amazon-scientific", "given", 0, str(shared_data))
    seqs = UserSequences.from_split(split)
    lines = (shared_data / "amazon-scientific" / "Scientific.test.inter").read_text().splitlines()
    user_of = {int(raw): u for u, raw in enumerate(inter.user_ids)}
    test = split.matrix("test").tocsr()
    for line in lines[1:300]:
        raw_user, hist, target = line.split("\t")
        history = list(dict.fromkeys(int(x) for x in hist.split()))  # first occurrences
        if int(target) in history:
            continue
        u = user_of[int(raw_user)]
        got = seqs.inputs(np.array([u]), "test", 50)[0]
        np.testing.assert_array_equal(inter.item_ids[got[got > 0] - 1], history[-50:])
        assert inter.item_ids[test[u].indices[0]] == int(target)


def test_ml100k_loo_test_input_ends_with_the_valid_item(shared_data):
    from florec.recdata.store import get_split

    split, _ = get_split("ml-100k", "loo", 0, str(shared_data))
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    test, train = seqs.inputs(users, "test", 50), seqs.inputs(users, "train", 50)
    valid = split.matrix("valid").tocsr()
    np.testing.assert_array_equal(test[:, -1] - 1, [valid[u].indices[0] for u in users])
    np.testing.assert_array_equal(test[:, :-1], train[:, 1:])
