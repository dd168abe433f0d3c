"""``build_llm``: the backend a config names, wrapped in the call cache."""

from __future__ import annotations

from florec.models.llm.base import LLM
from florec.models.llm.cache import CachedLLM, CallCache
from florec.models.llm.config import LLMConfig
from florec.models.llm.scripted import ChoiceRule, ScriptedLLM, TextRule, echo_text, uniform_rule
from florec.models.llm.weights import llm_cache_dir

CACHE_FILE = "calls.sqlite"


def build_llm(cfg: LLMConfig, *, scripted_rule: ChoiceRule | None = None,
              scripted_text: TextRule | None = None, scripted_name: str | None = None) -> LLM:
    """Build the backend ``cfg.backend`` (wrapped in the call cache unless ``cfg.cache`` is off).

    Parameters
    ----------
    cfg : LLMConfig
        Backend, model and options.
    scripted_rule : callable, optional
        ``scripted`` only: the letter rule (default uniform; see
        :func:`florec.models.llm.scripted.pick_target_rule` for the positive control).
    scripted_text : callable, optional
        ``scripted`` only: ``prompt -> answer`` for ``generate`` (default a fixed template).
    scripted_name : str, optional
        ``scripted`` only: the rule's name in the cache key (default: its ``__name__`` and
        ``scripted_p``). Give distinct names to distinct rules if you cache them.

    Returns
    -------
    LLM
        Ready to answer; ``stats`` counts its calls.

    """
    llm: LLM
    if cfg.backend == "tiny":
        from florec.models.llm.tiny import build_tiny

        llm = build_tiny(cfg)
    elif cfg.backend == "hf":
        from florec.models.llm.hf import build_hf

        llm = build_hf(cfg)
    elif cfg.backend == "openai":
        from florec.models.llm.openai_backend import OpenAILLM

        llm = OpenAILLM(cfg)
    else:
        rule = scripted_rule or uniform_rule
        name = scripted_name or f"{getattr(rule, '__name__', 'rule')}-p{cfg.scripted_p:g}"
        llm = ScriptedLLM(rule, scripted_text or echo_text, seed=cfg.seed, name=name,
                          progress=cfg.progress)
    if not cfg.cache:
        return llm
    return CachedLLM(llm, CallCache(llm_cache_dir(cfg.cache_dir) / CACHE_FILE))
