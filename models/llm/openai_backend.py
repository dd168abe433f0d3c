"""The ``openai`` backend: any OpenAI-compatible server (vLLM, llama.cpp's llama-server, Ollama).

Requests run ``max_concurrency`` at a time, each retried with exponential backoff on connection
errors, timeouts, 429 and 5xx. Letter scoring asks for one token with ``top_logprobs`` and
reads either format servers use:

* chat-style (``/chat/completions``, llama-server, vLLM, OpenAI):
  ``choices[0].logprobs.content[0].top_logprobs = [{"id", "token", "logprob"}, ...]``;
* legacy completions (``/completions``, vLLM):
  ``choices[0].logprobs.top_logprobs = [{token: logprob, ...}, ...]``.

Servers report raw full-vocabulary logprobs, so the letters' values are renormalised over the
candidate letters (tokens equal to a letter up to surrounding whitespace are pooled); a letter
missing from the top list (pushed out by e.g. a newline token) gets probability 0, and a
response with no letter at all gets the uniform distribution (counted in ``no_letter``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from tqdm.auto import tqdm

from florec.models.llm.base import LLM, Sink, check_choices
from florec.models.llm.config import LLMConfig
from florec.recdata.errors import FloRecError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class LLMServerError(FloRecError):
    """The LLM server is unreachable or answered something unusable (one line, with its URL)."""


def top_logprobs_of(response: dict) -> dict[str, float]:
    """Token -> logprob of the first generated position, from either response format.

    Raises
    ------
    KeyError, IndexError, TypeError
        The response carries no logprobs in a known format.

    """
    logprobs = response["choices"][0]["logprobs"]
    if logprobs.get("content") is not None:  # chat-style
        entries = logprobs["content"][0]["top_logprobs"]
        pairs = [(e["token"], float(e["logprob"])) for e in entries]
    else:  # legacy completions
        pairs = [(t, float(lp)) for t, lp in logprobs["top_logprobs"][0].items()]
    return dict(pairs)


def letter_distribution(top: dict[str, float], letters: str) -> np.ndarray:
    """Renormalise raw logprobs over the candidate letters.

    ``p_j = sum_{t: strip(t) = L_j} exp(lp_t) / sum_k sum_{t: strip(t) = L_k} exp(lp_t)``;
    all zeros (no letter in the list) -> uniform.
    """
    mass = np.zeros(len(letters))
    for token, lp in top.items():
        j = letters.find(token.strip()) if len(token.strip()) == 1 else -1
        if j >= 0 and math.isfinite(lp):
            mass[j] += math.exp(lp)
    total = mass.sum()
    return mass / total if total > 0 else np.full(len(letters), 1.0 / len(letters))


def chatml(prompt: str, system: str | None) -> str:
    """A ChatML prompt with the assistant turn opened (for the legacy endpoint)."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


class OpenAILLM(LLM):
    """A client of one OpenAI-compatible server (``cfg.base_url``, model ``cfg.model``)."""

    def __init__(self, cfg: LLMConfig) -> None:
        import httpx

        super().__init__()
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/")
        self.key = f"openai:{self.url}:{cfg.model}:{cfg.openai_endpoint}"
        self.progress = cfg.progress
        self.no_letter = 0
        key = os.environ.get(cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=cfg.timeout_s)

    # -- HTTP -------------------------------------------------------------------------------
    def post(self, path: str, payload: dict) -> dict:
        """POST with retries and backoff (0.5 s, 1 s, 2 s, ...); one-line errors."""
        import httpx

        problem = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                reply = self.client.post(path, json=payload)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:80]}"
                continue
            if reply.status_code in RETRY_STATUS:
                problem = f"HTTP {reply.status_code}"
                continue
            if reply.status_code >= 400:
                raise LLMServerError(f"LLM server {self.url}{path} answered HTTP "
                                     f"{reply.status_code} ({' '.join(reply.text.split())[:120]})"
                                     f"; check llm-model={self.cfg.model!r} and the server log")
            return reply.json()
        raise LLMServerError(f"LLM server {self.url} is unreachable after "
                             f"{self.cfg.retries + 1} tries ({problem}); start it or fix "
                             "llm-base-url")

    def _payload(self, prompt: str, system: str | None, **params) -> tuple[str, dict]:
        body = {"model": self.cfg.model, **params}
        if self.cfg.openai_endpoint == "completions":
            return "/completions", {**body, "prompt": chatml(prompt, system)}
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": prompt}]
        return "/chat/completions", {**body, "messages": messages}

    def _count(self, reply: dict) -> None:
        usage = reply.get("usage") or {}
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    # -- one prompt ---------------------------------------------------------------------------
    def _one_text(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int,
                  system: str | None) -> str:
        path, body = self._payload(prompt, system, max_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed)
        reply = self.post(path, body)
        self._count(reply)
        choice = reply["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return (text or "").strip()

    def _one_choice(self, prompt: str, n_choices: int, *, system: str | None) -> np.ndarray:
        letters = check_choices(n_choices, self.letters)
        k = self.cfg.top_logprobs
        if self.cfg.openai_endpoint == "completions":
            path, body = self._payload(prompt, system, max_tokens=1, temperature=0.0, logprobs=k)
        else:
            path, body = self._payload(prompt, system, max_tokens=1, temperature=0.0,
                                       logprobs=True, top_logprobs=k)
        reply = self.post(path, body)
        self._count(reply)
        try:
            top = top_logprobs_of(reply)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise LLMServerError(f"LLM server {self.url} returned no logprobs; use a server "
                                 "that supports them (vLLM, llama-server) for letter "
                                 "scoring") from None
        if not any(len(t.strip()) == 1 and t.strip() in letters for t in top):
            self.no_letter += 1
        return letter_distribution(top, letters)

    # -- batches: concurrent, handed to the sink as they finish -------------------------------
    def _concurrent(self, prompts: list[str], sink: Sink, desc: str,
                    one: Callable[[str], object]) -> None:
        if not prompts:
            return
        began = time.perf_counter()
        try:
            with ThreadPoolExecutor(self.cfg.max_concurrency) as pool, \
                    tqdm(total=len(prompts), desc=desc, unit="prompt",
                         disable=not self.progress, dynamic_ncols=True) as bar:
                futures = {pool.submit(one, p): i for i, p in enumerate(prompts)}
                try:
                    for future in as_completed(futures):
                        sink([futures[future]], [future.result()])
                        self.stats.llm_calls += 1
                        bar.update(1)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            self.stats.llm_seconds += time.perf_counter() - began

    def stream_generate(self, prompts: list[str], sink: Sink, *, max_new_tokens: int,
                        temperature: float, seed: int, system: str | None, desc: str) -> None:
        """Answer concurrently; each answer goes to ``sink`` as it arrives."""
        self._concurrent(prompts, sink, desc, lambda p: self._one_text(
            p, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system))

    def stream_choices(self, prompts: list[str], n_choices: int, sink: Sink, *,
                       system: str | None, desc: str) -> None:
        """Score concurrently; each row goes to ``sink`` as it arrives."""
        self._concurrent(prompts, sink, desc,
                         lambda p: self._one_choice(p, n_choices, system=system))

    def _generate_batch(self, prompts: list[str], **kwargs) -> list[str]:
        return [self._one_text(p, **kwargs) for p in prompts]

    def _choices_batch(self, prompts: list[str], n_choices: int, *,
                       system: str | None) -> np.ndarray:
        return np.stack([self._one_choice(p, n_choices, system=system) for p in prompts])

    def finetune_choices(self, *args, **kwargs) -> dict:
        """Not possible here: train the adapter elsewhere and serve it (vLLM ``--lora-modules``)."""
        raise NotImplementedError("the openai backend cannot fine-tune: train the adapter with "
                                  "llm-backend 'hf' and serve it from your server")
