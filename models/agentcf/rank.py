"""Inference: rank 1 true + 9 same-domain candidates with the agents' memories, and the metrics.

Candidates are shown in a seeded shuffle (row-keyed, identical for every method). ``choice``
mode orders them by the LLM's distribution over the letters (ties keep the shuffled order: a
flat distribution ranks at random); ``titles`` mode asks for a ranked title list and matches it
back by fuzzy ratio (:func:`florec.models.agentcf.prompts.match_titles`). Strategies: ``b``
(memory only), ``bh`` (+ the user's last training titles), ``br`` (+ the long-term memory entry
TF-IDF-closest to the candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from florec.models.agentcf.groups import closest
from florec.models.agentcf.memory import UserMemory
from florec.models.agentcf.prompts import match_titles, rank_prompt
from florec.recdata.seeds import Salt, stream

K_LIST = (1, 5, 10)


def slot_order(seed: int, row: int, n: int) -> np.ndarray:
    """The shuffled display order of one test row's candidates (candidate indices)."""
    return stream(seed, Salt.AGENTCF_SLOTS, row).permutation(n)


def ranks_from_scores(scores: np.ndarray, slots: np.ndarray) -> int:
    """1-based rank of candidate 0 when slots are ordered by descending score (stable)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return int(np.flatnonzero(slots[order] == 0)[0]) + 1


def rank_metrics(ranks: Sequence[int], k_list: Sequence[int] = K_LIST) -> dict[str, float]:
    r"""MRR and NDCG@K of 1-based ranks of the single true item.

    ``MRR = mean(1 / r)``; with one relevant item the ideal DCG is 1, so
    ``NDCG@K = mean([r <= K] / log2(r + 1))``.
    """
    r = np.asarray(ranks, np.float64)
    if r.size == 0:
        return {"mrr": float("nan"), **{f"ndcg@{k}": float("nan") for k in k_list}, "n": 0}
    out = {"mrr": float(np.mean(1.0 / r))}
    for k in k_list:
        out[f"ndcg@{k}"] = float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1), 0.0)))
    out["n"] = int(r.size)
    return out


def random_mrr(n: int) -> float:
    """Expected MRR of a random order of ``n`` candidates: ``(1/n) sum_{r=1}^{n} 1/r``."""
    return float(np.mean(1.0 / np.arange(1, n + 1)))


@dataclass
class RankSettings:
    """Inference knobs (see the module docstring)."""

    strategy: str = "b"
    mode: str = "choice"
    history: int = 10
    seed: int = 0
    temperature: float = 0.7
    max_new_tokens: int = 200
    threshold: float = 0.6


def rank_rows(llm, rows: Sequence[int], test: Sequence[tuple[int, int]],
              candidates: np.ndarray, memories: dict[int, UserMemory],
              describe: Callable[[int], str], titles: Sequence[str], item_domain: np.ndarray,
              domains: Sequence[str], train: dict[int, list[tuple[int, float]]],
              settings: RankSettings,
              group_text: Callable[[int, int, str], str] | None = None) -> dict[str, object]:
    """Rank the candidates of test ``rows``; returns ``ranks`` (aligned with rows) and stats.

    ``group_text(user, domain, memory) -> str`` supplies AgentCF++'s group memory ("" if none).
    """
    prompts, slots_all = [], []
    for row in rows:
        user, _ = test[row]
        cands = candidates[row]
        d = int(item_domain[cands[0]])
        mem = memories[user]
        view = mem.view(d)
        slots = slot_order(settings.seed, row, len(cands))
        descs = [describe(int(cands[j])) for j in slots]
        history: list[str] = []
        past = ""
        if settings.strategy == "bh":
            items = [i for i, _ in train.get(user, [])
                     if not mem.dual or int(item_domain[i]) == d]
            history = [titles[i] for i in items[-settings.history:]]
        elif settings.strategy == "br":
            log = mem.history(d)
            past = log[closest(" ".join(descs), log)] if log else ""
        group = group_text(user, d, view) if group_text is not None else ""
        prompts.append(rank_prompt(view, descs, domains[d], history=history, past=past,
                                   group=group, titles=settings.mode == "titles"))
        slots_all.append(slots)
    if not prompts:
        return {"ranks": [], "prompts": [], "match_failures": 0}
    n = candidates.shape[1]
    if settings.mode == "titles":
        answers = llm.generate(prompts, max_new_tokens=settings.max_new_tokens,
                               temperature=settings.temperature, seed=settings.seed,
                               desc="agentcf rank (titles)")
        ranks, failures = [], 0
        for row, slots, answer in zip(rows, slots_all, answers, strict=True):
            shown = [titles[int(candidates[row][j])] for j in slots]
            order, miss = match_titles(answer, shown, settings.threshold,
                                       stream(settings.seed, Salt.AGENTCF_TITLE_TIES, row))
            failures += miss
            ranks.append(int(np.flatnonzero(slots[order] == 0)[0]) + 1)
        return {"ranks": ranks, "prompts": prompts, "match_failures": failures}
    probs = llm.choice_distribution(prompts, n, desc="agentcf rank")
    ranks = [ranks_from_scores(p, s) for p, s in zip(probs, slots_all, strict=True)]
    return {"ranks": ranks, "prompts": prompts, "match_failures": 0}
