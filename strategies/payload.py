"""What strategies do with replies: byte counts and shape checks (server side only).

The array encoding itself is :mod:`florec.protocol.codec`, shared with the nodes.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict

from florec.protocol.codec import from_record

__all__ = ["checked_arrays", "record_nbytes"]


def record_nbytes(content: RecordDict) -> int:
    """Bytes of the array payload of a message (arrays only; config and metrics are tiny)."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


def checked_arrays(msg: Message, expected: dict[str, tuple[int, ...] | int | None]
                   ) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """A reply's arrays, decoded once, and why it cannot be aggregated (``None`` if it can).

    Each expected array must be present, of the expected shape, of a real dtype (bool,
    integer or floating: ``dtype.kind`` in ``"biuf"``) and, if floating, finite; a strategy
    folds the arrays returned here instead of decoding the record again.

    Parameters
    ----------
    msg : Message
        A training reply.
    expected : dict
        Array names to a full shape, to the number of columns (an int; 0 for a 1-D array)
        where the row count varies, or to ``None`` where any shape will do.

    Returns
    -------
    (dict or None, str or None)
        The reply's ``arrays`` record as numpy arrays (None for an error reply, one without
        the record or one whose arrays do not decode) and the problem, if any.

    """
    if msg.has_error():
        return None, f"client error: {msg.error.reason}"
    if "arrays" not in msg.content.array_records:
        return None, "reply has no 'arrays' record"
    try:
        arrays = from_record(msg.content.array_records["arrays"])
    except (ValueError, OverflowError, TypeError) as err:  # a malformed payload: drop it
        return None, f"undecodable arrays: {err}"
    for name, shape in expected.items():
        if name not in arrays:
            return arrays, f"reply lacks array '{name}'"
        got = arrays[name].shape
        want_ok = (
            True
            if shape is None
            else got == shape
            if isinstance(shape, tuple)
            else (got[1:] == (shape,) if shape else len(got) == 1)
        )
        if not want_ok:
            return arrays, f"array '{name}' has shape {got}, expected {shape}"
        if arrays[name].dtype.kind not in "biuf":  # complex, datetime, str, void, object
            return arrays, f"array '{name}' of dtype {arrays[name].dtype}, expected real numbers"
        if np.issubdtype(arrays[name].dtype, np.floating) and not np.all(np.isfinite(arrays[name])):
            return arrays, f"array '{name}' holds NaN or inf"
    return arrays, None
