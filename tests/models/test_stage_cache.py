"""The stage cache: keys follow the arrays, entries round-trip, bad entries warn and miss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from florec.models.stage_cache import StageCache, StageCacheWarning, array_digest, stage_key


def test_array_digest_changes_with_values_dtype_and_shape_only():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_digest(a) == array_digest(a.copy())
    assert array_digest(a) != array_digest(a.astype(np.float64))
    assert array_digest(a) != array_digest(a.reshape(3, 2))
    b = a.copy()
    b[1, 2] += 1e-6
    assert array_digest(a) != array_digest(b)
    m = sp.random(5, 7, density=0.3, format="csr", random_state=0)
    assert array_digest(m) == array_digest(m.tocoo())  # same matrix, another format
    assert array_digest(None) == "none"


def test_stage_key_depends_on_every_part_and_refuses_raw_arrays():
    base = {"knobs": {"lr": 0.001, "seed": 0}, "data": array_digest(np.ones(3))}
    assert stage_key("s", base) == stage_key("s", dict(reversed(base.items())))
    assert stage_key("s", base) != stage_key("t", base)
    assert stage_key("s", base) != stage_key("s", base | {"knobs": {"lr": 0.001, "seed": 1}})
    with pytest.raises(TypeError):
        stage_key("s", {"data": np.ones(3)})


def test_entry_round_trips_exactly_and_reports_hit(tmp_path):
    cache = StageCache(tmp_path)
    arrays = {"w": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
              "rng": np.arange(10, dtype=np.uint8)}
    meta = {"metrics": {"ndcg@10": 0.1234567890123}, "rows": [{"round": 1}]}
    assert cache.load("stage", "k1") is None and cache.events == {"stage": "miss"}
    cache.save("stage", "k1", arrays, meta)
    got, got_meta = cache.load("stage", "k1")
    assert got_meta == meta
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype
    assert cache.events == {"stage": "hit"} and cache.hits == 1
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary file was renamed


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_entry_warns_in_one_line_and_misses(tmp_path, damage):
    cache = StageCache(tmp_path)
    path = cache.save("stage", "k", {"w": np.arange(64, dtype=np.float32)}, {"a": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 40])
    elif damage == "flip":  # a changed weight byte: only the stored digest can tell
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.warns(StageCacheWarning) as caught:
        assert cache.load("stage", "k") is None
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "retraining" in str(caught[0].message)
    assert cache.events == {"stage": "corrupt"}


def test_disabled_cache_never_reads_or_writes(tmp_path):
    on = StageCache(tmp_path)
    on.save("stage", "k", {"w": np.ones(2)}, {})
    off = StageCache(tmp_path, enabled=False)
    assert off.load("stage", "k") is None and off.events == {"stage": "off"}
    assert off.save("stage", "k2", {"w": np.ones(2)}, {}) is None
    assert not off.path("stage", "k2").exists()


@pytest.mark.parametrize("failure", ["disk-full", "unwritable"])
def test_a_failed_save_warns_in_one_line_and_the_run_goes_on(tmp_path, monkeypatch, failure):
    import safetensors.numpy

    if failure == "disk-full":
        cache = StageCache(tmp_path)

        def full(tensors, filename, metadata=None):
            open(filename, "wb").close()  # a partial file, then the disk is full
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(safetensors.numpy, "save_file", full)
    else:  # the cache folder's parent is a file: mkdir fails
        (tmp_path / "blocked").write_text("")
        cache = StageCache(tmp_path / "blocked")
    with pytest.warns(StageCacheWarning) as caught:
        assert cache.save("stage", "k", {"w": np.ones(3)}, {"a": 1}) is None
    message = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in message
    assert str(cache.path("stage", "k")) in message and "writable" in message
    assert not list(tmp_path.rglob("*.tmp")) and not cache.path("stage", "k").exists()
