"""The interface every LLM backend implements, its call statistics and the batching loop."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

LETTERS = "ABCDEFGHIJ"
#: ``sink(indices, results)``: receives each finished batch (the cache stores it at once).
Sink = Callable[[list[int], list], None]


@dataclass
class LLMStats:
    """What a run spent on its LLM (reported in results.json).

    Attributes
    ----------
    llm_calls : int
        Prompts answered by the backend (cache misses).
    llm_cache_hits : int
        Prompts answered by the call cache.
    prompt_tokens, completion_tokens : int
        Tokens read and written by the backend (0 for cache hits).
    llm_seconds : float
        Wall-clock seconds spent inside the backend.

    """

    llm_calls: int = 0
    llm_cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict."""
        return asdict(self)

    def copy(self) -> LLMStats:
        """A snapshot (take one before a phase, then :meth:`since` it after)."""
        return LLMStats(**asdict(self))

    def since(self, before: LLMStats) -> LLMStats:
        """What was spent after the snapshot ``before`` (one phase's counters)."""
        return LLMStats(**{k: v - getattr(before, k) for k, v in asdict(self).items()})

    def add(self, other: LLMStats) -> None:
        """Add another run's counters to these (e.g. summed over nodes)."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def check_choices(n_choices: int, letters: str = LETTERS) -> str:
    """The first ``n_choices`` letters; ``ValueError`` unless ``1 <= n_choices <= len(letters)``."""
    if not 1 <= n_choices <= len(letters):
        raise ValueError(f"n_choices={n_choices} is out of range; use 1..{len(letters)} "
                         f"(letters {letters})")
    return letters[:n_choices]


class LLM(ABC):
    """An LLM with two primitives: batched ``generate`` and ``choice_distribution``.

    Subclasses implement :meth:`_generate_batch` and :meth:`_choices_batch` (one batch, no
    caching); the public methods batch, show a progress bar with an ETA, and time the calls.
    Backends that answer out of order (``openai``) override the ``stream_*`` methods.
    """

    key: str = ""
    #: how sampled answers are drawn (in the cache key of sampled calls; "" = not versioned)
    sampling: str = ""
    letters: str = LETTERS
    batch_size: int = 16
    score_batch_size: int = 0  # 0: batch_size
    progress: bool = True

    def __init__(self) -> None:
        self.stats = LLMStats()

    # -- public primitives ------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, seed: int = 0, system: str | None = None,
                 desc: str = "generate") -> list[str]:
        """Answer each prompt (a user message; the backend applies the chat template).

        Parameters
        ----------
        prompts : sequence of str
            User messages.
        max_new_tokens : int
            Longest answer in tokens.
        temperature : float
            0 = greedy; > 0 samples (seeded by ``seed``).
        seed : int
            Sampling seed. A prompt's sampled answer is a function of (``seed``, the prompt)
            only, whatever else shares its batch, so a cached answer is the one the prompt
            would get alone, up to the rounding of its logits: in bf16 that moves with the
            batch layout and can flip a near-tie (:mod:`florec.models.llm.sampling`);
            ``batch_size`` 1 (``llm-batch-size=1``) runs every prompt alone.
        system : str, optional
            System message (default: the model's own).
        desc : str
            Label of the progress bar.

        Returns
        -------
        list of str
            One answer per prompt, in order.

        """
        out: list = [None] * len(prompts)
        self.stream_generate(list(prompts), _fill(out), max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed, system=system, desc=desc)
        return out

    def choice_distribution(self, prompts: Sequence[str], n_choices: int, *,
                            system: str | None = None, desc: str = "score") -> np.ndarray:
        """The distribution of the answer's first token over the letters ``A..``.

        ``p[b, j] = exp(z_bj) / sum_{k < n_choices} exp(z_bk)``, with ``z_bj`` the next-token
        logit (or logprob) of letter ``j`` after the assistant turn starts: renormalised over
        the candidate letters.

        Parameters
        ----------
        prompts : sequence of str
            User messages that ask for one letter.
        n_choices : int
            Number of candidates (letters ``A`` .. ``letters[n_choices-1]``).
        system : str, optional
            System message.
        desc : str
            Label of the progress bar.

        Returns
        -------
        np.ndarray
            ``(len(prompts), n_choices)`` float64 rows that sum to 1.

        Raises
        ------
        ValueError
            ``n_choices`` is out of range, or a letter is not a single token after the chat
            template.

        """
        check_choices(n_choices, self.letters)
        out = np.zeros((len(prompts), n_choices))
        self.stream_choices(list(prompts), n_choices, _fill(out), system=system, desc=desc)
        return out

    def finetune_choices(self, prompts: Sequence[str], targets: Sequence[int], n_choices: int,
                         *, epochs: int = 1, lr: float = 2e-4, lora_r: int = 8,
                         batch_size: int = 4, seed: int = 0) -> dict:
        """Fine-tune a LoRA adapter so the first answer token is the target letter (CE).

        Returns
        -------
        dict
            Training statistics (steps, losses, seconds).

        """
        raise NotImplementedError(f"{type(self).__name__} cannot be fine-tuned")

    def new_adapter(self, lora_r: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Attach a fresh LoRA adapter and return its state.

        ``A`` is drawn from ``seed`` and ``B = 0``, so the model's answers are unchanged: the
        common start of a federated LoRA run.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be fine-tuned")

    def adapter_state(self) -> dict[str, np.ndarray]:
        """The LoRA weights by name (empty before :meth:`finetune_choices`)."""
        return {}

    def load_adapter_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the LoRA weights (e.g. the FedAvg mean of the nodes' adapters)."""
        raise NotImplementedError(f"{type(self).__name__} has no adapter")

    def save_adapter(self, path: Path) -> None:
        """Write the adapter (PEFT format) into folder ``path``."""
        raise NotImplementedError(f"{type(self).__name__} has no adapter")

    # -- batching -----------------------------------------------------------------------------
    def stream_generate(self, prompts: list[str], sink: Sink, *, max_new_tokens: int,
                        temperature: float, seed: int, system: str | None, desc: str) -> None:
        """Answer ``prompts`` batch by batch, handing each batch to ``sink``."""
        self._stream(prompts, sink, desc, lambda chunk: self._generate_batch(
            chunk, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            system=system))

    def stream_choices(self, prompts: list[str], n_choices: int, sink: Sink, *,
                       system: str | None, desc: str) -> None:
        """Score ``prompts`` batch by batch, handing each batch of rows to ``sink``."""
        self._stream(prompts, sink, desc,
                     lambda chunk: list(self._choices_batch(chunk, n_choices, system=system)),
                     self.score_batch_size or self.batch_size)

    def _stream(self, prompts: list[str], sink: Sink, desc: str,
                run: Callable[[list[str]], list], batch_size: int = 0) -> None:
        if not prompts:
            return
        # Batches of similar length pad less; the sink gets the original indices.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            step = batch_size or self.batch_size
            for start in range(0, len(order), step):
                indices = order[start:start + step]
                began = time.perf_counter()
                results = run([prompts[i] for i in indices])
                self.stats.llm_seconds += time.perf_counter() - began
                self.stats.llm_calls += len(indices)
                sink(indices, results)
                bar.update(len(indices))

    @abstractmethod
    def _generate_batch(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                        seed: int, system: str | None) -> list[str]:
        """Answer one batch (no caching, no progress bar)."""

    @abstractmethod
    def _choices_batch(self, prompts: list[str], n_choices: int, *,
                       system: str | None) -> np.ndarray:
        """Letter distribution of one batch, ``(len(prompts), n_choices)``."""


def _fill(out: list | np.ndarray) -> Sink:
    def sink(indices: list[int], results: list) -> None:
        for i, r in zip(indices, results, strict=True):
            out[i] = r
    return sink
