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


def _npy(shape: str, version: tuple[int, int] = (1, 0), body: bytes = bytes(32)) -> Array:
    """A hand-made ``.npy`` payload with a float64 header of ``shape`` (a hostile node's)."""
    head = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode("latin1")
    size = 2 if version[0] == 1 else 4
    head += b" " * (63 - (8 + size + len(head)) % 64) + b"\n"
    data = b"\x93NUMPY" + bytes(version) + len(head).to_bytes(size, "little") + head + body
    return Array(dtype="float64", shape=(4,), stype="numpy.ndarray", data=data)


@pytest.mark.parametrize("shape", ["(-1,)", "(-4,)", "(2, -2)", "(-2, 2)"])
def test_negative_dimensions_raise_flowers_value_error(shape):
    hostile = _npy(shape)
    with pytest.raises(ValueError, match="negative dimensions"):
        hostile.numpy()
    with pytest.raises(ValueError, match="negative dimensions"):
        decode(hostile)


@pytest.mark.parametrize("version", [(1, 1), (2, 1), (2, 5)])
def test_a_nonzero_minor_format_version_is_refused_as_flower_refuses_it(version):
    hostile = _npy("(4,)", version)
    with pytest.raises(ValueError, match="format version"):
        hostile.numpy()
    with pytest.raises(ValueError, match="format version"):
        decode(hostile)


@pytest.mark.parametrize("shape", ["(5,)", "(1099511627776, 1099511627776)",
                                   "(4611686018427387904, 4)"])
def test_a_shape_larger_than_the_payload_raises_a_clear_value_error(shape):
    with pytest.raises(ValueError, match="array data truncated"):
        decode(_npy(shape))


def test_a_well_formed_hand_made_header_decodes_and_trailing_bytes_are_ignored():
    body = np.arange(6.0).tobytes()
    np.testing.assert_array_equal(decode(_npy("(2, 2)", (2, 0), body)), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(_npy("(2, 2)", (2, 0), body).numpy(), [[0, 1], [2, 3]])


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
