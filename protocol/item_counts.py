"""The item counts of item-weighted FedAvg (``aggregation='item-weighted'``, sequential models).

A node's training reply carries, beside its arrays, one record ``item-counts`` with how often
each row of the item table occurs in the node's training windows; the server averages each
item row with these counts as weights (:class:`florec.strategies.fedavg_params.FedAvgParams`).
What it reveals is the node's item histogram, summed over its users: the same set of items a
node's trained rows already show, now with their frequencies (docs/methods/sequential.md).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from florec.protocol.codec import from_record, to_record

#: name of the reply's record holding the counts (one array ``counts``)
COUNTS_RECORD = "item-counts"
#: arrays whose name ends with this are item tables (row 0 = padding)
ITEM_TABLE_SUFFIX = "item.weight"


def item_counts(windows: np.ndarray, n_items: int) -> np.ndarray:
    r"""How often each item-table row occurs in left-padded token ``windows`` (row 0: 0).

    Parameters
    ----------
    windows : np.ndarray
        ``(U, L)`` item tokens, 1..n_items, 0 = padding.
    n_items : int
        Number of items (the table has ``n_items + 1`` rows).

    Returns
    -------
    np.ndarray
        ``(n_items + 1,)`` float32 counts, :math:`c_i = \#\{(u, l) : w_{ul} = i\}`, ``c_0 = 0``.

    """
    counts = np.bincount(windows.ravel(), minlength=n_items + 1).astype(np.float32)
    counts[0] = 0.0
    return counts


def counts_record(windows: np.ndarray, n_items: int) -> ArrayRecord:
    """The ``item-counts`` record of a node's training ``windows`` (:func:`item_counts`)."""
    return to_record({"counts": item_counts(windows, n_items)})


def record_counts(record: ArrayRecord) -> np.ndarray | None:
    """The counts array an ``item-counts`` record holds (``None`` if it holds none)."""
    return from_record(record).get("counts")
