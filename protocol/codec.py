"""Numpy arrays <-> Flower ``ArrayRecord``: the one encoding of every message's arrays."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays -> ArrayRecord (keys kept, arrays made C-contiguous)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy arrays (keys kept)."""
    return {k: v.numpy() for k, v in record.items()}
