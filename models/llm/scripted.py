"""The ``scripted`` backend: answers by a rule, deterministically (the positive control).

With :func:`pick_target_rule` the letter distribution puts its mode on the true letter with
probability ``p`` and on another letter otherwise, so a ranker driven by it moves the true item
to the top in a known share ``p`` of prompts: the method's gain is predictable, which proves the
plumbing between prompts, letters and metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from florec.models.llm.base import LLM

#: ``rule(prompt, n_choices, rng) -> distribution over the n_choices letters``.
ChoiceRule = Callable[[str, int, np.random.Generator], np.ndarray]
TextRule = Callable[[str], str]


def pick_target_rule(answer_of: Callable[[str], int], p: float,
                     peak: float = 0.9) -> ChoiceRule:
    """A rule that picks the true letter with probability ``p``, else another letter.

    The picked letter ``c`` is the true one ``t = answer_of(prompt)`` with probability ``p``,
    otherwise uniform over the other ``n - 1`` letters; the distribution returned is
    ``q_j = peak * [j = c] + (1 - peak) / n``, so ``P(argmax q = t) = p`` exactly and the other
    letters tie (a ranker keeps their order).

    Parameters
    ----------
    answer_of : callable
        ``prompt -> index of the true letter`` (e.g. looked up from the prompt's candidates).
    p : float
        Probability of picking the true letter, in [0, 1].
    peak : float
        Mass on the picked letter beyond the uniform floor.

    Returns
    -------
    callable
        A :data:`ChoiceRule`.

    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} is not a probability; choose a value in [0, 1]")

    def rule(prompt: str, n_choices: int, rng: np.random.Generator) -> np.ndarray:
        true = int(answer_of(prompt))
        if not 0 <= true < n_choices:
            raise ValueError(f"answer_of returned {true} for a prompt with {n_choices} choices")
        pick = true
        if n_choices > 1 and rng.random() >= p:
            pick = int(rng.choice([j for j in range(n_choices) if j != true]))
        q = np.full(n_choices, (1.0 - peak) / n_choices)
        q[pick] += peak
        return q

    return rule


def uniform_rule(prompt: str, n_choices: int, rng: np.random.Generator) -> np.ndarray:
    """The uninformative rule: every letter equally likely."""
    return np.full(n_choices, 1.0 / n_choices)


def echo_text(prompt: str) -> str:
    """Default text rule: a fixed template over the prompt's first words."""
    words = " ".join(prompt.split()[:12])
    return f"Summary: {words}"


class ScriptedLLM(LLM):
    """An LLM whose answers come from Python rules (no weights, no tokens).

    Every prompt gets its own random generator, seeded by ``seed`` and the prompt's sha256, so
    answers do not depend on batching, order or caching.
    """

    def __init__(self, rule: ChoiceRule = uniform_rule, rule_text: TextRule = echo_text, *,
                 seed: int = 0, name: str = "uniform", progress: bool = True) -> None:
        super().__init__()
        self.rule, self.rule_text, self.seed = rule, rule_text, seed
        self.key = f"scripted:{name}:seed{seed}"
        self.batch_size = 256
        self.progress = progress

    def _rng(self, prompt: str) -> np.random.Generator:
        digest = hashlib.sha256(prompt.encode()).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])

    def _choices_batch(self, prompts: list[str], n_choices: int, *,
                       system: str | None) -> np.ndarray:
        rows = []
        for prompt in prompts:
            q = np.asarray(self.rule(prompt, n_choices, self._rng(prompt)), np.float64)
            if q.shape != (n_choices,) or (q < 0).any() or q.sum() <= 0:
                raise ValueError(f"the scripted rule returned {q!r}; return {n_choices} "
                                 "non-negative weights")
            rows.append(q / q.sum())
        return np.stack(rows)

    def _generate_batch(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                        seed: int, system: str | None) -> list[str]:
        return [self.rule_text(p) for p in prompts]

    def finetune_choices(self, *args, **kwargs) -> dict:
        """Not possible: the scripted backend has no weights."""
        raise NotImplementedError("the scripted backend has no weights to fine-tune; use "
                                  "llm-backend 'hf' or 'tiny'")
