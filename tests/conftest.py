"""Shared fixtures: an isolated cache, the shared data folder, small synthetic configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Splits built by tests go to a temporary cache, never the user's ~/.cache/florec."""
    os.environ["FLOREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("florec-cache"))


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder (``FLOREC_TEST_DATA``); skip where a user would lack it."""
    root = os.environ.get("FLOREC_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("FLOREC_TEST_DATA is unset: point it at a folder holding ml-100k/ etc.")
    return Path(root)


SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2}


@pytest.fixture
def small_config() -> dict:
    """A run config small enough for a federated run in about a second."""
    return dict(SMALL)


class WordEncoder:
    """Unit vectors from the words of a text (a stand-in for MiniLM: no weights to load)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit row per text: the sum of a seeded normal vector per word."""
        rows = []
        for text in texts:
            vec = np.zeros(16)
            for word in text.split():
                vec += np.random.default_rng(list(word.encode())).normal(size=16)
            rows.append(vec / np.linalg.norm(vec))
        return np.stack(rows)


@pytest.fixture
def word_encoder() -> WordEncoder:
    """A deterministic sentence encoder for tests of code that embeds text."""
    return WordEncoder()


def _assert_no_trace(flat: np.ndarray, want: np.ndarray, key: str) -> int:
    """Every window of ``flat`` against ``want``: few equal entries, no correlation.

    Returns the number of windows compared (0 when ``flat`` is too short to carry ``want``).
    """
    if flat.size < want.size:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(flat, want.size)
    assert (windows == want).mean(axis=1).max() < 0.05, key
    w = windows - windows.mean(axis=1, keepdims=True)
    c = want - want.mean()
    corr = (w @ c) / (np.linalg.norm(w, axis=1) * np.linalg.norm(c) + 1e-12)
    assert np.abs(corr).max() < 0.2, key
    return len(windows)


@pytest.fixture
def no_trace():
    """``no_trace(flat, want, key)``: assert a message array carries no trace of a node's input
    at any offset (masked uploads); returns the windows compared."""
    return _assert_no_trace


def _downlink_similarity(downlink: dict[str, np.ndarray]) -> np.ndarray:
    """``S_bar = Q Lambda Q^T`` from FedCIA's dense downlink (``basis``, ``eigvals``)."""
    q, vals = downlink["basis"].astype(np.float64), downlink["eigvals"].astype(np.float64)
    return (q * vals) @ q.T


@pytest.fixture
def downlink_similarity():
    """``downlink_similarity(downlink)``: the ``n x n`` similarity of a dense FedCIA downlink."""
    return _downlink_similarity
