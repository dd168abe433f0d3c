"""The weights' part of an HF LLM key: every shard counts, a single file keeps its sha256."""

from __future__ import annotations

from pathlib import Path

from florec.models.llm.hf import shards_sha256
from florec.models.llm.weights import file_sha256


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_single_file_key_is_its_own_sha256(tmp_path):
    one = _write(tmp_path / "model.safetensors", b"weights")
    assert shards_sha256([one]) == file_sha256(one)  # SmolLM2-style keys do not change


def test_every_shard_of_a_sharded_model_enters_the_key(tmp_path):
    a = _write(tmp_path / "model-00001-of-00002.safetensors", b"first")
    b = _write(tmp_path / "model-00002-of-00002.safetensors", b"second")
    key = shards_sha256([a, b])
    assert shards_sha256([b, a]) == key  # order-free
    assert key not in (file_sha256(a), file_sha256(b))
    _write(b, b"second, fine-tuned")  # only the second shard changes
    assert shards_sha256([a, b]) != key
