"""Sessions: every persona sees a recommender's top-k, picks or skips with a reason, remembers.

One session is one step for the whole population, so every LLM primitive runs as one batch:
rank (the recommender), recall (memory retrieval with the list as query), choose (letter
distribution over the list, the argmax is the item the persona considers), click (letters
A/B; the click is a seeded Bernoulli draw with the model's probability of A), reason (one
generated sentence), remember (an observation and an action piece, embedded; importance by
kind, or rated by the LLM). In closed loop the clicks are the persona's new implicit feedback:
the recommender folds them in or refits (:mod:`florec.sim.personas.recommender`) before the
next session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from florec.models.llm.base import LLM
from florec.models.llm.encoder import SentenceEncoder
from florec.recdata.errors import ConfigError
from florec.recdata.item_text import ItemText, item_text_string
from florec.recdata.seeds import Salt
from florec.recdata.splits import Split
from florec.sim.personas.agent import (
    Agent,
    choice_prompt,
    click_prompt,
    importance_prompt,
    reason_prompt,
)
from florec.sim.personas.memory import KIND_IMPORTANCE
from florec.sim.personas.persona import Persona
from florec.sim.personas.recommender import Ranker

CLICK_SALT = Salt.PERSONA_CLICK


@dataclass(frozen=True)
class SessionOptions:
    """How sessions run.

    Attributes
    ----------
    sessions : int
        Sessions per persona.
    list_size : int
        Items shown per session (1..10: the letters A..J).
    closed_loop : bool
        Feed clicks back to the recommender between sessions.
    exclude_shown : bool
        Never show an item twice to a persona (else only clicked and known items are hidden).
    memory_top : int
        Memories recalled into each prompt.
    importance : {"kind", "llm"}
        Importance of a new memory: fixed by kind, or UXAgent's LLM rating (one more call).
    reason_tokens : int
        Longest reason in tokens.
    temperature : float
        Sampling temperature of the reasons.
    seed : int
        Seed of clicks and sampling.
    noun : str
        What the catalogue holds, for prompts.

    """

    sessions: int = 3
    list_size: int = 10
    closed_loop: bool = True
    exclude_shown: bool = True
    memory_top: int = 3
    importance: str = "kind"
    reason_tokens: int = 32
    temperature: float = 0.7
    seed: int = 0
    noun: str = "movie"

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ConfigError(f"sessions={self.sessions} is below 1; simulate 1 or more")
        if not 1 <= self.list_size <= 10:
            raise ConfigError(f"list size {self.list_size} is outside 1..10 (letters A..J)")
        if self.importance not in ("kind", "llm"):
            raise ConfigError(f"importance {self.importance!r} is unknown; use 'kind' or 'llm'")


def known_items(split: Split) -> Any:
    """Every (user, item) of the split's three parts, as one CSR matrix (what users have seen)."""
    known = (split.matrix("train") + split.matrix("valid") + split.matrix("test")).tocsr()
    return known


def simulate(ranker: Ranker, personas: list[Persona], llm: LLM, encoder: SentenceEncoder,
             texts: list[ItemText], split: Split, opts: SessionOptions) -> list[dict]:
    """Run ``opts.sessions`` sessions of every persona against ``ranker``.

    Parameters
    ----------
    ranker : Ranker
        The recommender under test.
    personas : list of Persona
        The population (written; the same for every recommender compared).
    llm : LLM
        Answers the prompts (``hf``, ``openai``, ``tiny`` or the scripted policy).
    encoder : SentenceEncoder
        Embeds memories and retrieval queries.
    texts : list of ItemText
        Item text by internal id.
    split : Split
        The recommender's split (anchors' known items are never shown).
    opts : SessionOptions
        Session settings.

    Returns
    -------
    list of dict
        One record per (persona, session): ``pid``, ``session``, ``shown`` (item ids),
        ``p_choice``, ``considered``, ``p_click``, ``clicked``, ``reason``, ``memories``.

    """
    lines = [item_text_string(t) for t in texts]
    known = known_items(split)
    agents = [Agent(p) for p in personas]
    records: list[dict] = []
    for s in range(1, opts.sessions + 1):
        lists = [_top(ranker, a, known, opts) for a in agents]
        queries = encoder.encode([f"{a.persona.intent}. " + "; ".join(texts[i].title for i in top)
                                  for a, top in zip(agents, lists, strict=True)])
        memories = [a.recall(q, s, opts.memory_top) for a, q in zip(agents, queries, strict=True)]
        n = opts.list_size
        p_choice = llm.choice_distribution(
            [choice_prompt(a, [lines[i] for i in top], m, opts.noun)
             for a, top, m in zip(agents, lists, memories, strict=True)],
            n, desc=f"session {s}: choose")
        considered = [int(top[int(np.argmax(p))]) for top, p in zip(lists, p_choice, strict=True)]
        p_click = llm.choice_distribution(
            [click_prompt(a, lines[i], m, opts.noun)
             for a, i, m in zip(agents, considered, memories, strict=True)],
            2, desc=f"session {s}: click")[:, 0]
        clicked = [bool(np.random.default_rng([opts.seed, CLICK_SALT, a.persona.index, s])
                        .random() < p) for a, p in zip(agents, p_click, strict=True)]
        reasons = llm.generate([reason_prompt(a, lines[i], c) for a, i, c
                                in zip(agents, considered, clicked, strict=True)],
                               max_new_tokens=opts.reason_tokens, temperature=opts.temperature,
                               seed=opts.seed * 1000 + s, desc=f"session {s}: reason")
        reasons = [" ".join(r.split()) for r in reasons]
        _remember(agents, lists, considered, clicked, reasons, texts, s, llm, encoder, opts)
        for a, top, p, i, pc, c, r, m in zip(agents, lists, p_choice, considered, p_click,
                                             clicked, reasons, memories, strict=True):
            records.append({"pid": a.persona.pid, "session": s, "shown": [int(x) for x in top],
                            "p_choice": [round(float(x), 6) for x in p], "considered": i,
                            "p_click": round(float(pc), 6), "clicked": c, "reason": r,
                            "memories": m})
            a.shown.update(int(x) for x in top)
            if c:
                a.clicks.append(i)
        if opts.closed_loop:
            ranker.update({a.persona.anchor: a.clicks for a in agents
                           if a.persona.anchor is not None and a.clicks})
    return records


def _top(ranker: Ranker, agent: Agent, known: Any, opts: SessionOptions) -> np.ndarray:
    """The recommender's top ``list_size`` among items the persona has not seen."""
    p = agent.persona
    scores = np.asarray(ranker.scores(p, agent.clicks if opts.closed_loop else []),
                        np.float64).copy()
    hide = set(agent.clicks) | set(p.seed_items)
    if opts.exclude_shown:
        hide |= agent.shown
    if p.anchor is not None:
        hide |= set(known.indices[known.indptr[p.anchor]:known.indptr[p.anchor + 1]].tolist())
    scores[list(hide)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:opts.list_size]
    if np.isneginf(scores[top]).any():
        raise ConfigError(f"persona {p.pid} has fewer than {opts.list_size} unseen items left; "
                          "simulate fewer sessions or allow repeats (exclude_shown=False)")
    return top


def _remember(agents: list[Agent], lists: list[np.ndarray], considered: list[int],
              clicked: list[bool], reasons: list[str], texts: list[ItemText], s: int, llm: LLM,
              encoder: SentenceEncoder, opts: SessionOptions) -> None:
    """Write each agent's observation and action of session ``s`` into its memory stream."""
    pieces: list[tuple[Agent, str, str]] = []
    for a, top, i, c, r in zip(agents, lists, considered, clicked, reasons, strict=True):
        shown = ", ".join(texts[j].title for j in top[:3])
        pieces.append((a, "observation", f"Session {s}: the site showed {shown} and "
                                          f"{max(len(top) - 3, 0)} more."))
        pieces.append((a, "action", f"Session {s}: I {'clicked' if c else 'skipped'} "
                                    f"{texts[i].title}. {r}"))
    emb = encoder.encode([text for _, _, text in pieces])
    if opts.importance == "llm":
        p = llm.choice_distribution([importance_prompt(a, text) for a, _, text in pieces], 10,
                                    desc=f"session {s}: importance")
        importance = (p @ np.arange(1, 11)) / 10.0
    else:
        importance = np.array([KIND_IMPORTANCE[kind] for _, kind, _ in pieces])
    for (a, kind, text), e, imp in zip(pieces, emb, importance, strict=True):
        a.memory.add(kind, text, s, e, float(np.clip(imp, 0.0, 1.0)))
