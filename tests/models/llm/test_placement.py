import numpy as np
import pytest

from florec.models.llm.placement import leaked_texts

HISTORY = ["Toy Story (1995) | Genres: Animation", "GoldenEye (1995) | Genres: Action"]


def test_numbers_only_payloads_leak_nothing():
    payload = {"item_rows": np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32),
               "meta": {"round": 3, "loss": 0.5}, "ids": [1, 2, 3]}
    assert leaked_texts([payload], HISTORY) == []


@pytest.mark.parametrize("carrier", [
    lambda t: t.encode(),                                  # raw bytes
    lambda t: {"cfg": {"prompt": f"User watched {t}."}},   # a config string
    lambda t: np.array([t, "x"]),                          # numpy unicode (UTF-32)
    lambda t: [np.array([t], dtype=object)],               # object array
    lambda t: b"\x00npy-header" + t.encode() + b"\x01",    # embedded in a serialised blob
])
def test_history_text_is_found_wherever_it_hides(carrier):
    assert leaked_texts([carrier(HISTORY[1])], HISTORY) == [HISTORY[1]]


def test_short_texts_are_not_checked_and_unknown_payloads_are_refused():
    assert leaked_texts([b"1995"], ["1995"]) == []
    with pytest.raises(TypeError, match="cannot scan"):
        leaked_texts([object()], HISTORY)
