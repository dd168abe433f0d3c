r"""CoT-Rec phase 2b: the LLM reorders the retriever's top-10 (LlamaRec style), and MAPB.

The candidates of a user are the retriever's top-10, shuffled (seeded per user) and labelled
A..J; the LLM's letter distribution re-ranks them (ties keep the retriever's order). Metrics are
averaged over **all** evaluated users: a user whose target is not in the top-10 keeps the
retriever's miss, so only covered users need an LLM call (the metrics are the same as scoring
everyone).

MAPB (mean absolute position bias, cotrec.md §2): place the target in each slot ``s`` of the
``S`` candidate slots in turn, keep the other candidates in their order, and record the target's
rank :math:`r_{u,s}` (1-based) after re-ranking. Then

.. math:: \mathrm{MAPB}_u = \frac{1}{S} \sum_{s=1}^{S}
          \Bigl| r_{u,s} - \frac{1}{S} \sum_{s'} r_{u,s'} \Bigr|, \qquad
          \mathrm{MAPB} = \frac{1}{|U|} \sum_u \mathrm{MAPB}_u.

0 means the ranker ignores where the target sits; larger means stronger position bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from florec.models.cotrec.prompts import SYSTEM, ranker_prompt
from florec.recdata.seeds import Salt, stream

K = 10


def shuffled_slots(n_users: int, k: int, seed: int) -> np.ndarray:
    """``(n_users, k)`` permutations: row u lists which retriever rank sits in each slot."""
    rng = stream(seed, Salt.COTREC_SLOTS)
    return np.argsort(rng.random((n_users, k)), axis=1)


def rerank(probs: np.ndarray) -> np.ndarray:
    """Slot order by descending probability; ties keep the slot order (stable).

    Returns ``(B, S)``: entry ``[b, j]`` is the slot placed at rank ``j+1``.
    """
    return np.argsort(-np.asarray(probs, dtype=np.float64), axis=1, kind="stable")


def slot_ranks(probs: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """1-based rank after :func:`rerank` of the given slot of each row."""
    order = rerank(probs)
    return 1 + np.argmax(order == np.asarray(slots)[:, None], axis=1)


def mapb(ranks: np.ndarray) -> float:
    """MAPB of a ``(U, S)`` matrix of target ranks, one column per target slot (module formula).

    Raises
    ------
    ValueError
        If ``ranks`` is not a non-empty 2-D array.

    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 2 or r.size == 0:
        raise ValueError(f"MAPB needs a non-empty (users, slots) rank matrix, got shape {r.shape}")
    return float(np.abs(r - r.mean(1, keepdims=True)).mean(1).mean())


@dataclass
class RankerTask:
    """Prompts of the users the ranker scores, with where their target sits.

    Attributes
    ----------
    users : np.ndarray
        Users (row ids of the candidate matrix) that get a prompt.
    prompts : list of str
        One prompt per user: candidates in slot order.
    order : np.ndarray
        ``(len(users), K)`` item id in each slot.
    target_slot : np.ndarray
        Slot of the target (-1 if it is not among the candidates).

    """

    users: np.ndarray
    prompts: list[str]
    order: np.ndarray
    target_slot: np.ndarray


PromptFn = Callable[[int, Sequence[int]], str]


def prompt_builder(text_of: Callable[[int], str], history_of: Callable[[int], Sequence[str]],
                   preference_of: Callable[[int], str]) -> PromptFn:
    """``prompt(user, items in slot order)`` from item text, the user's history and preference."""
    def prompt(user: int, items: Sequence[int]) -> str:
        return ranker_prompt(preference_of(user), history_of(user),
                             [text_of(int(i)) for i in items])
    return prompt


def build_task(users: np.ndarray, top: np.ndarray, targets: np.ndarray, slots: np.ndarray,
               prompt: PromptFn, only_covered: bool = True) -> RankerTask:
    """Ranker prompts of ``users`` (rows of ``top`` / ``targets`` / ``slots``).

    ``top`` holds each user's retriever top-K item ids in rank order; ``slots`` the shuffle of
    :func:`shuffled_slots`. With ``only_covered`` users whose target is not in the top-K are left
    out (their metrics are the retriever's miss either way).
    """
    order = np.take_along_axis(top, slots, axis=1)
    hit = order == targets[:, None]
    target_slot = np.where(hit.any(1), hit.argmax(1), -1)
    keep = target_slot >= 0 if only_covered else np.ones(len(users), dtype=bool)
    prompts = [prompt(int(u), row) for u, row in zip(users[keep], order[keep], strict=True)]
    return RankerTask(users[keep], prompts, order[keep], target_slot[keep])


def ranked_metrics(ranks: np.ndarray, n_users: int, k: int = K) -> dict[str, float]:
    """``ndcg@k`` and ``hr@k`` over ``n_users`` users from the 1-based ranks of covered users.

    NDCG@k = mean_u 1/log2(r_u + 1) for r_u <= k, else 0 (one target per user, LOO); users
    absent from ``ranks`` count as misses.
    """
    r = np.asarray(ranks, dtype=np.float64)
    inside = r <= k
    return {f"ndcg@{k}": float((1.0 / np.log2(r[inside] + 1)).sum() / max(n_users, 1)),
            f"hr@{k}": float(inside.sum() / max(n_users, 1))}


def score_task(llm: object, task: RankerTask, desc: str = "cotrec ranker") -> np.ndarray:
    """1-based rank of each task user's target after the LLM re-ranks the slots."""
    if not task.prompts:
        return np.zeros(0, dtype=np.int64)
    probs = llm.choice_distribution(task.prompts, task.order.shape[1], system=SYSTEM, desc=desc)
    return slot_ranks(probs, task.target_slot)


def mapb_task(task: RankerTask, n_users: int, prompt: PromptFn) -> RankerTask:
    """The S-fold task of MAPB for the first ``n_users`` covered task users.

    Row ``(r, s)`` (user-major) keeps the other candidates in their shuffled order and puts the
    target in slot ``s``; :func:`score_task` of it gives the :math:`r_{u,s}` of :func:`mapb`.
    """
    covered = np.flatnonzero(task.target_slot >= 0)[:n_users]
    k = task.order.shape[1]
    users, prompts, orders, slots = [], [], [], []
    for r in covered:
        target = task.order[r, task.target_slot[r]]
        others = [int(i) for i in task.order[r] if i != target]
        for s in range(k):
            items = others[:s] + [int(target)] + others[s:]
            users.append(task.users[r])
            prompts.append(prompt(int(task.users[r]), items))
            orders.append(items)
            slots.append(s)
    return RankerTask(np.asarray(users, dtype=np.int64), prompts,
                      np.asarray(orders, dtype=np.int64).reshape(-1, k),
                      np.asarray(slots, dtype=np.int64))

