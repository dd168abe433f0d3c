"""AgentCF / AgentCF++ prompts (our wording after the authors' structure) and answer parsing.

Every prompt starts with a ``### <kind>`` header line naming its task, and lists candidates as
``"A. <item description>"`` lines; the scripted positive control parses exactly this layout
(:mod:`florec.models.agentcf.scripted`), so a change here must keep it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

from florec.models.llm.base import LETTERS

PROMPT_VERSION = "agentcf-v1"
KINDS = ("decide", "user-reflection", "fuse", "item-reflection", "rank", "rank-titles", "tags")
CANDIDATE = re.compile(r"^([A-J])\. (.*)$", re.MULTILINE)


def _candidates(descriptions: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[j]}. {d}" for j, d in enumerate(descriptions))


def decide_prompt(memory: str, descriptions: Sequence[str], domain: str) -> str:
    """Forward step: the user agent picks one of two items of ``domain`` (answer: a letter)."""
    return (f"### decide\nYou are a shopper. Your self-introduction, with your preferences and "
            f"dislikes:\n[memory] {memory}\n\nYou are choosing one of two {domain} items:\n"
            f"{_candidates(descriptions)}\n\nWhich item fits your preferences better? If your "
            "self-introduction says nothing relevant, use common sense. Answer with one letter.")


def user_reflection_prompt(memory: str, descriptions: Sequence[str], chosen: str, pos: str,
                           neg: str, domain: str, words: int) -> str:
    """Backward step of the user agent: rewrite the self-introduction after the true choice."""
    verdict = ("This was the right choice: your self-introduction predicted you well."
               if chosen == pos else
               "This was the wrong choice: your self-introduction misled you.")
    return (f"### user-reflection\nYou are a shopper. Your previous self-introduction:\n"
            f"[memory] {memory}\n\nYou compared two {domain} items:\n{_candidates(descriptions)}"
            f"\n\nYou chose: {chosen}\nPreferred item: {pos}\nDisliked item: {neg}\n{verdict}\n"
            "Update your self-introduction: first the new preferences the preferred item shows, "
            "then your earlier preferences without contradictions, then your dislikes. Describe "
            f"item features only, be specific, and stay under {words} words.\n"
            "My updated self-introduction:")


def fuse_prompt(separated: dict[str, str], old_fused: str, domain: str, words: int) -> str:
    """AgentCF++'s fusion: all per-domain memories + old F_u^d -> new F_u^d."""
    lines = "\n".join(f"- {name}: {text}" for name, text in separated.items())
    return (f"### fuse\nYou are a shopper. Your preferences in each product domain:\n{lines}\n\n"
            f"Your previous view of your {domain} preferences:\n[fused] {old_fused}\n\n"
            f"Deduce your likely preferences for {domain} items, using the other domains only "
            f"where they matter for {domain}. Describe {domain} preferences directly, under "
            f"{words} words.\n[target] {domain}\nMy deduced preference:")


def item_reflection_prompt(user_view: str, descriptions: Sequence[str], pos: str, neg: str,
                           target: str, old: str, liked: bool, words: int) -> str:
    """Backward step of an item agent: rewrite its description after a user's choice."""
    role = "preferred" if liked else "rejected"
    return (f"### item-reflection\nA shopper describes their preferences:\n[memory] {user_view}"
            f"\n\nThe shopper compared two items:\n{_candidates(descriptions)}\n"
            f"Preferred item: {pos}\nRejected item: {neg}\n\nUpdate the description of the "
            f"{role} item \"{target}\" (previous: {old}). Say what kind of user "
            f"{'likes' if liked else 'dislikes'} it, refer to users collectively, keep its real "
            f"features, and stay under {words} words.\nThe updated description:")


def rank_prompt(memory: str, descriptions: Sequence[str], domain: str, *,
                history: Sequence[str] = (), past: str = "", group: str = "",
                titles: bool = False) -> str:
    """Ranking prompt over lettered candidates (strategy B, +H history, +R past memory, group).

    ``titles=False``: answer one letter (ranked by the letter distribution, our default);
    ``titles=True``: list every title in order (the authors' output, parsed by
    :func:`match_titles`).
    """
    parts = [f"### {'rank-titles' if titles else 'rank'}\nI am a shopper. My self-introduction, "
             f"with my preferences and dislikes:\n[memory] {memory}"]
    if past:
        parts.append(f"My earlier self-introduction (prioritise the current one):\n[past] {past}")
    if history:
        parts.append("Items I bought before:\n" + "\n".join(f"- {h}" for h in history))
    if group:
        parts.append(f"[group] {group}\nConsider what users with tastes like mine chose "
                     "recently; their choices may influence mine.")
    parts.append(f"Candidate {domain} items:\n{_candidates(descriptions)}")
    if titles:
        parts.append("Rank all candidates from best to worst match for me. Output format:\n"
                     "Rank:\n1. <item title>\n2. <item title>\n...")
    else:
        parts.append("Which item would I choose first? Answer with one letter.")
    return "\n\n".join(parts)


def llmrank_prompt(history: Sequence[str], descriptions: Sequence[str], domain: str) -> str:
    """Zero-shot LLMRank baseline: history titles and the candidates, no agent memory."""
    hist = "\n".join(f"- {h}" for h in history) or "- (nothing yet)"
    return (f"### rank\nI have bought these items:\n{hist}\n\nCandidate {domain} items:\n"
            f"{_candidates(descriptions)}\n\nWhich item would I choose first, based on my "
            "history? Answer with one letter.")


def tags_prompt(memories: Sequence[str]) -> str:
    """Interest tags of a user from their memories (AgentCF++ groups)."""
    text = "\n".join(f"[memory] {m}" for m in memories)
    return (f"### tags\nA shopper describes their preferences:\n{text}\n\nExtract three to five "
            "short interest tags (two or three words each) that name the product styles and "
            "features the shopper likes. Output only the tags, separated by commas.\nTags:")


def parse_tags(answer: str, limit: int = 5) -> list[str]:
    """Comma/newline separated tags, lower-cased, de-duplicated, at most ``limit``."""
    tags = [re.sub(r"^[\s\-\*\d\.\"'\[\]]+|[\s\"'\[\]\.]+$", "", t).lower()
            for t in re.split(r"[,\n;]", answer)]
    return list(dict.fromkeys(t for t in tags if t and len(t) <= 60))[:limit]


def match_titles(answer: str, titles: Sequence[str], threshold: float = 0.6,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Order of candidates named in a ``Rank:`` list, by fuzzy title match.

    Each answer line is matched to the most similar candidate title
    (``difflib.SequenceMatcher.ratio`` on lower-cased text) if that ratio is at least
    ``threshold`` and the candidate is not matched yet (the first occurrence wins); the
    candidates never named follow in seeded-random order.

    Returns
    -------
    order : np.ndarray
        Candidate indices, best first (a permutation).
    failures : int
        Answer lines that matched no unused candidate.

    """
    rng = rng or np.random.default_rng(0)
    lowered = [t.lower() for t in titles]
    order: list[int] = []
    failures = 0
    for line in answer.splitlines():
        text = re.sub(r"^\s*(rank:)?\s*\d+[\.\)]\s*", "", line, flags=re.IGNORECASE).strip()
        if not text or text.lower() == "rank:":
            continue
        text = text.lower()
        ratios = [difflib.SequenceMatcher(None, text, t).ratio() for t in lowered]
        best = int(np.argmax(ratios))
        if ratios[best] >= threshold and best not in order:
            order.append(best)
        else:
            failures += 1
    rest = [j for j in range(len(titles)) if j not in order]
    return np.asarray(order + [rest[k] for k in rng.permutation(len(rest))], np.int64), failures
