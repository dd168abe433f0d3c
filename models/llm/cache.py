"""The call cache: every LLM answer stored on disk under the sha256 of what produced it.

The key of one answer is ``sha256(json([backend key, kind, prompt, system, parameters]))``,
where the backend key names the backend, the model and its file's sha256 (plus the LoRA
adapter's digest once one is set); a sampled ``generate`` adds the backend's sampling scheme
(``HFLLM.sampling``: per-prompt generators), so answers of an older batch-seeded sampler are
never replayed. Answers live in one SQLite file (``<florec cache>/llm/
calls.sqlite``, WAL mode, so nodes of a simulation can share it); each finished batch is
committed at once, so an interrupted run (Ctrl-C) keeps everything answered so far and a rerun
costs only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from florec.models.llm.base import LLM, check_choices

SCHEMA = "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_LOOKUP_CHUNK = 500


class CallCache:
    """A key -> JSON value store in SQLite (thread-safe, committed per write batch)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=120.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, object]:
        """The stored values of those keys that are present."""
        found: dict[str, object] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start:start + _LOOKUP_CHUNK]
                rows = self._db.execute(
                    f"SELECT key, value FROM calls WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall()
                found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, items: Sequence[tuple[str, object]]) -> None:
        """Store values (JSON) and commit."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in items])
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def call_key(backend_key: str, kind: str, prompt: str, params: dict) -> str:
    """sha256 of everything that determines one answer."""
    blob = json.dumps([backend_key, kind, prompt, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class CachedLLM(LLM):
    """An LLM that answers from :class:`CallCache` first and asks ``inner`` only for misses.

    ``stats`` is the inner backend's: ``llm_calls`` counts misses, ``llm_cache_hits`` hits.
    Training and adapter methods go straight to ``inner`` (its key changes with the adapter,
    so answers of a fine-tuned model never mix with the base model's).
    """

    def __init__(self, inner: LLM, cache: CallCache) -> None:
        self.inner, self.cache = inner, cache
        self.stats = inner.stats
        self.letters = inner.letters

    @property
    def key(self) -> str:  # type: ignore[override]
        """The inner backend's key."""
        return self.inner.key

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, seed: int = 0, system: str | None = None,
                 desc: str = "generate") -> list[str]:
        """:meth:`LLM.generate`, answered from the cache where possible."""
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                  "seed": seed if temperature > 0 else 0, "system": system}
        sampling = getattr(self.inner, "sampling", "") if temperature > 0 else ""
        return self._cached(list(prompts), "generate", params, lambda miss, sink:
                            self.inner.stream_generate(miss, sink, desc=desc, **params),
                            params | {"sampling": sampling} if sampling else params)

    def choice_distribution(self, prompts: Sequence[str], n_choices: int, *,
                            system: str | None = None, desc: str = "score") -> np.ndarray:
        """:meth:`LLM.choice_distribution`, answered from the cache where possible."""
        check_choices(n_choices, self.letters)
        params = {"n_choices": n_choices, "system": system}
        rows = self._cached(list(prompts), "choices", params, lambda miss, sink:
                            self.inner.stream_choices(miss, n_choices, sink, system=system,
                                                      desc=desc))
        return np.asarray(rows, np.float64).reshape(len(prompts), n_choices)

    def _cached(self, prompts: list[str], kind: str, params: dict, run,
                key_params: dict | None = None) -> list:
        keys = [call_key(self.inner.key, kind, p, key_params or params) for p in prompts]
        found = self.cache.get_many(keys)
        miss_keys = [k for k in dict.fromkeys(keys) if k not in found]
        self.stats.llm_cache_hits += len(prompts) - len(miss_keys)  # repeats count as hits
        if miss_keys:
            prompt_of = dict(zip(keys, prompts, strict=True))
            miss = [prompt_of[k] for k in miss_keys]

            def sink(indices: list[int], results: list) -> None:
                items = [(miss_keys[i], _plain(r)) for i, r in zip(indices, results,
                                                                  strict=True)]
                self.cache.put_many(items)
                found.update(items)

            run(miss, sink)
        return [found[k] for k in keys]

    # -- delegation ---------------------------------------------------------------------------
    def finetune_choices(self, *args, **kwargs) -> dict:
        """See :meth:`LLM.finetune_choices` (runs on the inner backend)."""
        return self.inner.finetune_choices(*args, **kwargs)

    def new_adapter(self, lora_r: int, seed: int = 0) -> dict[str, np.ndarray]:
        """See :meth:`LLM.new_adapter` (runs on the inner backend)."""
        return self.inner.new_adapter(lora_r, seed)

    def adapter_state(self) -> dict[str, np.ndarray]:
        """See :meth:`LLM.adapter_state`."""
        return self.inner.adapter_state()

    def load_adapter_state(self, state: dict[str, np.ndarray]) -> None:
        """See :meth:`LLM.load_adapter_state`."""
        self.inner.load_adapter_state(state)

    def save_adapter(self, path: Path) -> None:
        """See :meth:`LLM.save_adapter`."""
        self.inner.save_adapter(path)

    def stream_generate(self, *args, **kwargs) -> None:
        """Uncached streaming (the inner backend's)."""
        self.inner.stream_generate(*args, **kwargs)

    def stream_choices(self, *args, **kwargs) -> None:
        """Uncached streaming (the inner backend's)."""
        self.inner.stream_choices(*args, **kwargs)

    def _generate_batch(self, *args, **kwargs) -> list[str]:
        return self.inner._generate_batch(*args, **kwargs)

    def _choices_batch(self, *args, **kwargs) -> np.ndarray:
        return self.inner._choices_batch(*args, **kwargs)

    def __getattr__(self, name: str):
        # Backend-specific helpers (e.g. HFLLM.chat_text, .tokenizer) stay reachable.
        if name in ("inner", "cache"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value
