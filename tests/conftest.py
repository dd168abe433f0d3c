"""Shared fixtures: an isolated cache, the shared data folder, small synthetic configs."""

from __future__ import annotations

import os
from pathlib import Path

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
