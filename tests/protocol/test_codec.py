"""The array codec: Flower's own bytes and arrays, through one copy each way."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from florec.protocol.codec import decode, encode, from_record, to_record

RNG = np.random.default_rng(0)
ARRAYS = {
    "f32": RNG.normal(size=(7, 3)).astype(np.float32),
    "f64": RNG.normal(size=5),
    "i64": np.arange(-3, 9),
    "bool": RNG.random((2, 2, 2)) > 0.5,
    "u8": np.arange(10, dtype=np.uint8),
    "c64": (RNG.normal(size=3) + 1j).astype(np.complex64),
    "big-endian": np.arange(4, dtype=">f4"),
    "scalar": np.array(2.5),
    "empty": np.zeros((0, 3), np.float32),
    "unicode": np.array(["a", "bc"]),
    "structured": np.zeros(2, dtype=[("x", "<i4"), ("y", "<f8")]),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_encode_writes_the_bytes_flower_writes(name):
    a = np.ascontiguousarray(ARRAYS[name])
    got, want = encode(a), Array(a)
    assert (got.dtype, got.shape, got.stype, got.data) == (want.dtype, want.shape, want.stype,
                                                            want.data)


@pytest.mark.parametrize("name", list(ARRAYS))
def test_decode_gives_the_array_flower_gives(name):
    record = Array(np.ascontiguousarray(ARRAYS[name]))
    got, want = decode(record), record.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable and got.flags.owndata and got.flags.c_contiguous


def test_a_fortran_ordered_array_is_read_as_numpy_reads_it():
    record = Array(np.asfortranarray(RNG.normal(size=(4, 3))))
    got, want = decode(record), record.numpy()
    np.testing.assert_array_equal(got, want)
    assert got.flags.f_contiguous == want.flags.f_contiguous


def test_a_truncated_array_raises_a_value_error_as_flower_does():
    whole = Array(np.arange(100.0))
    cut = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data[:-8])
    with pytest.raises(ValueError):
        cut.numpy()
    with pytest.raises(ValueError):
        decode(cut)


def test_an_array_of_another_stype_raises_as_flower_does():
    other = Array(dtype="float32", shape=(1,), stype="torch.Tensor", data=b"1234")
    with pytest.raises(TypeError):
        decode(other)


def test_records_round_trip_and_make_arrays_contiguous():
    arrays = {"t": RNG.normal(size=(6, 4))[:, ::2], "b": np.arange(3)}
    record = to_record(arrays)
    assert isinstance(record, ArrayRecord) and list(record) == ["t", "b"]
    back = from_record(record)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    assert record["t"].data == Array(np.ascontiguousarray(arrays["t"])).data


def test_plain_arrays_skip_flowers_bytesio_path(monkeypatch):
    record = to_record({"emb": ARRAYS["f32"], "items": ARRAYS["i64"]})

    def refuse(self):
        raise AssertionError("Array.numpy called")

    monkeypatch.setattr(Array, "numpy", refuse)
    monkeypatch.setattr(Array, "from_numpy_ndarray", classmethod(lambda cls, a: refuse(a)))
    back = from_record(to_record(from_record(record)))
    np.testing.assert_array_equal(back["emb"], ARRAYS["f32"])
