"""Numpy arrays <-> Flower ``ArrayRecord``: the one encoding of every message's arrays.

The bytes are Flower's own (``Array(ndarray)``: the ``.npy`` format of ``np.save``), so any
Flower peer reads them; only the work is cut. Flower writes and reads them through ``BytesIO``
(``np.save``/``np.load``: two to three copies of the data and a ``literal_eval`` of the header
per array); here an array is one header (cached by its bytes) and one copy each way. Anything
off the common path (Fortran order, object or zero-size dtypes, another ``stype``, a header
that needs format 2.0 or 3.0) goes through Flower's own code, with its results and errors.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord

#: Flower's ``stype`` of an ``.npy``-encoded numpy array
NUMPY_STYPE = "numpy.ndarray"
_MAGIC = b"\x93NUMPY"


def encode(a: np.ndarray) -> Array:
    """One C-contiguous array as a Flower ``Array``, byte for byte ``Array(a)``.

    Parameters
    ----------
    a : np.ndarray
        A C-contiguous array.

    Returns
    -------
    Array
        ``stype`` ``numpy.ndarray``; its ``data`` is what ``np.save`` writes.

    """
    if a.dtype.hasobject or a.dtype.names is not None or not a.flags.c_contiguous:
        return Array(a)
    shape = tuple(int(n) for n in a.shape)
    head = _npy_header(a.dtype, shape)
    if head is None:
        return Array(a)
    return Array(dtype=str(a.dtype), shape=shape, stype=NUMPY_STYPE,
                 data=b"".join((head, a)))  # one copy: the array is read as a buffer


@lru_cache(maxsize=1024)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The ``.npy`` 1.0 header ``np.save`` writes for a C-ordered array (None: it needs 2.0+)."""
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
            "shape": shape})
    except ValueError:  # too long, or not latin-1: np.save picks format 2.0 or 3.0
        return None
    return buf.getvalue()


@lru_cache(maxsize=1024)
def _header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran order) of an ``.npy`` header (magic included), as ``np.load``."""
    fp = io.BytesIO(head)
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fp)
    return dtype, shape, fortran


def decode(array: Array) -> np.ndarray:
    """A Flower ``Array`` as a new numpy array, equal to ``array.numpy()`` (dtype, shape, values).

    Parameters
    ----------
    array : Array
        An array of any ``stype`` (those other than ``numpy.ndarray`` raise as Flower does).

    Returns
    -------
    np.ndarray
        A writable, C-ordered array that owns its data.

    Raises
    ------
    ValueError
        For a malformed payload: Flower's own errors (bad magic, version or header, negative
        dimensions), or "array data truncated" where the header's shape needs more bytes than
        follow it (trailing bytes are ignored, as ``np.load`` ignores them).
    TypeError
        Flower's, for an array whose ``stype`` is not numpy's or whose header's shape is not
        a tuple of integers (a bool shape, for one).

    """
    data = array.data
    if array.stype != NUMPY_STYPE or len(data) < 12 or bytes(data[:6]) != _MAGIC \
            or data[6] not in (1, 2) or data[7] != 0:
        return array.numpy()  # Flower reads (or refuses) versions 3.0 and x.1+ itself
    offset = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else \
        12 + int.from_bytes(data[8:12], "little")
    dtype, shape, fortran = _header(bytes(data[:offset]))
    if fortran or dtype.hasobject or dtype.itemsize == 0 or any(n < 0 for n in shape):
        return array.numpy()  # negative dimensions: Flower's ValueError
    count = math.prod(shape)
    if count * dtype.itemsize > len(data) - offset:  # Python ints: a huge shape cannot wrap
        raise ValueError(f"array data truncated: header {shape} {dtype} needs "
                         f"{count * dtype.itemsize} bytes, the payload has "
                         f"{max(len(data) - offset, 0)}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays -> ArrayRecord (keys kept, arrays made C-contiguous)."""
    return ArrayRecord({k: encode(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> numpy arrays (keys kept)."""
    return {k: decode(v) for k, v in record.items()}
