"""The ranker stage: retriever top-10 -> LLM re-ranking (untuned, LoRA) -> metrics and MAPB.

Shared by the central runner and the federated nodes. Every user is evaluated; only users whose
target is in the top-10 get prompts (:mod:`florec.models.cotrec.ranker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from florec.models.cotrec.ranker import (
    K,
    PromptFn,
    RankerTask,
    build_task,
    mapb,
    mapb_task,
    ranked_metrics,
    score_task,
)
from florec.recdata.errors import ConfigError


def single_targets(truth: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """The one held-out item of each user (-1 if none).

    Raises
    ------
    ConfigError
        If a user has more than one held-out item (the ranker is defined for leave-one-out).

    """
    rows = truth[np.asarray(users, dtype=np.int64)].tocsr()
    counts = np.diff(rows.indptr)
    if (counts > 1).any():
        raise ConfigError("the CoT-Rec ranker needs one held-out item per user; use split='loo'")
    out = np.full(len(counts), -1, dtype=np.int64)
    out[counts == 1] = rows.indices
    return out


class AnswerBook:
    """Target slot of every ranker prompt built so far (the scripted positive control's oracle)."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}

    def add(self, task: RankerTask) -> None:
        """Remember the target slot of each prompt of ``task``."""
        self.slots.update(zip(task.prompts, task.target_slot.tolist(), strict=True))

    def __call__(self, prompt: str) -> int:
        """The target slot of ``prompt`` (``KeyError`` for a prompt no task built)."""
        return self.slots[prompt]


@dataclass
class RankInputs:
    """One split's ranker inputs for a set of users.

    Attributes
    ----------
    users : np.ndarray
        User ids (rows of the arrays below).
    top : np.ndarray
        ``(U, K)`` retriever top-K item ids in rank order.
    targets : np.ndarray
        Held-out item of each user (-1: not evaluated).
    prompt : callable
        ``prompt(user, items in slot order)``.
    slots : np.ndarray
        ``(U, K)`` shuffle of each user's candidates (:func:`shuffled_slots`).

    """

    users: np.ndarray
    top: np.ndarray
    targets: np.ndarray
    prompt: PromptFn
    slots: np.ndarray

    def n_evaluated(self) -> int:
        """Users with a held-out item."""
        return int((self.targets >= 0).sum())

    def task(self, book: AnswerBook | None = None) -> RankerTask:
        """Prompts of the covered users (registered in ``book``)."""
        task = build_task(self.users, self.top, self.targets, self.slots, self.prompt)
        if book is not None:
            book.add(task)
        return task


def retriever_metrics(inp: RankInputs) -> dict[str, float]:
    """NDCG@K/HR@K of the retriever's own order (the ranker's baseline) and the coverage."""
    hit = inp.top == inp.targets[:, None]
    ranks = 1 + hit.argmax(1)[hit.any(1) & (inp.targets >= 0)]
    n = inp.n_evaluated()
    return ranked_metrics(ranks, n, K) | {"coverage": len(ranks) / max(n, 1)}


def evaluate_ranker(llm: object, inp: RankInputs, mapb_users: int, label: str,
                    book: AnswerBook | None = None) -> dict[str, float]:
    """NDCG@K/HR@K over all evaluated users after LLM re-ranking, and MAPB (NaN if skipped)."""
    task = inp.task(book)
    out = ranked_metrics(score_task(llm, task, f"cotrec ranker ({label})"), inp.n_evaluated(), K)
    out["mapb"] = float("nan")
    expanded = mapb_task(task, mapb_users, inp.prompt)
    if expanded.prompts:
        if book is not None:
            book.add(expanded)
        out["mapb"] = mapb(score_task(llm, expanded, f"cotrec MAPB ({label})").reshape(-1, K))
        out["mapb_users"] = len(expanded.prompts) // K
    return out


def lora_samples(inp: RankInputs, book: AnswerBook | None = None
                 ) -> tuple[list[str], list[int]]:
    """Validation samples: one prompt per user whose validation item is in the top-K."""
    task = inp.task(book)
    return task.prompts, task.target_slot.tolist()

