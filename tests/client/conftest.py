"""Shared fixtures of the node-side tests."""

import pytest

from florec.client import node_store
from florec.sim.local_grid import LocalGrid


@pytest.fixture
def fresh_node_store():
    """Flower's run/task ids set as a Flower process would, and an empty node-store cache."""
    LocalGrid({}, 1, handlers={})
    node_store.clear_cache()
    yield
    node_store.clear_cache()
