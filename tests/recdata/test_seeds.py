"""Named salts: distinct, and each names a stream of its own."""

from enum import IntEnum

import numpy as np
import pytest

from florec.recdata.seeds import Salt, check_distinct, stream, torch_seed


def test_every_salt_is_distinct():
    assert len({int(s) for s in Salt}) == len(Salt.__members__)


def test_an_aliased_salt_is_refused_with_its_name():
    class Reused(IntEnum):
        A = 23
        B = 23

    with pytest.raises(ValueError, match="'B'"):
        check_distinct(Reused)


def test_a_stream_is_its_key_and_salts_separate_streams():
    np.testing.assert_array_equal(stream(3, Salt.COHORT, 5).random(4),
                                  np.random.default_rng([3, int(Salt.COHORT), 5]).random(4))
    a = stream(3, Salt.CENTRAL_SHUFFLE).random(4)
    b = stream(3, Salt.COHORT).random(4)
    assert not np.allclose(a, b)
    assert torch_seed(3, Salt.SEQ_DROPOUT, 1, 2) == torch_seed(3, Salt.SEQ_DROPOUT, 1, 2)
    assert torch_seed(3, Salt.SEQ_DROPOUT, 1, 2) != torch_seed(3, Salt.SEQ_ROUND, 1, 2)


def test_no_module_keys_a_stream_with_a_literal_salt():
    """Every keyed stream goes through recdata.seeds (a literal salt could reuse a stream)."""
    import re
    from pathlib import Path

    import florec

    root = Path(florec.__file__).parent
    literal = re.compile(r"default_rng\(\[\s*[\w.]+\s*,\s*\d|SeedSequence\(")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("client", "models", "protocol", "recdata", "server", "sim", "strategies")
        for path in sorted((root / folder).rglob("*.py")) if path.name != "seeds.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)
    ]
    assert offenders == []
