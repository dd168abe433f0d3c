"""The hf backend on the real SmolLM2 weights (slow: the first load converts the GGUF)."""

import numpy as np
import pytest
import torch

from florec.models.llm import build_llm
from florec.models.llm.weights import file_sha256, smollm2_gguf

pytestmark = pytest.mark.slow


def test_smollm2_is_converted_once_and_scores_letters(tiny_cfg):
    cfg = tiny_cfg.with_(backend="hf", device="cpu")
    llm = build_llm(cfg)
    sha = file_sha256(smollm2_gguf())
    assert llm.key.startswith(f"hf:SmolLM2-135M-Instruct:{sha}")
    folder = cfg.cache_dir / "smollm2-135m-instruct" / sha[:16]
    assert (folder / "SOURCE_SHA256").read_text().startswith(sha)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = build_llm(cfg)  # from the plain copy: no second conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.model.dtype == (torch.bfloat16 if torch.backends.mkldnn.is_available()
                                 else torch.float32)
    assert llm.letter_ids() == build_llm(tiny_cfg).letter_ids()
    q = "Which animal barks?\nA) Cat\nB) Fish\nC) Dog\nAnswer with the letter only."
    p = llm.choice_distribution([q, q], 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p[0], p[1], atol=1e-6)
    assert isinstance(llm.generate([q], max_new_tokens=4)[0], str)
