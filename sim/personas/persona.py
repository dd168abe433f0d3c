"""Personas: seeded demographics and intent, written out by an LLM, checked against the fields.

UXAgent's generator: demographics (age group, gender, income bracket) are drawn from ratios,
an intent is picked, and an LLM writes the full persona (background, financial situation,
habits, professional life, personal style, intent), shown a randomly chosen earlier persona as
the example for diversity. In FloRec a persona stands for a user of the trained run (its
*anchor*): its favourite genres and intent come from that user's training items, so the
recommender's list for it is the list that user gets. A cold-start persona has no anchor; its
genres are drawn from the catalogue and its text seeds a history (:func:`seed_items`).

The written text must agree with the sampled fields (pitfall 5 of the spec): a text whose
pronouns contradict the gender or whose stated age lies outside the age group is regenerated
(another seed), and after ``retries`` failures the persona keeps a template text
(``source = "template"``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from florec.models.llm.base import LLM
from florec.recdata.item_text import ItemText
from florec.recdata.seeds import Salt

PERSONA_SALT = Salt.PERSONA
#: Demographic ratios (FloRec's, roughly US adult shares; UXAgent reads its own from a file).
AGE_GROUPS = {"18-24": 0.12, "25-34": 0.18, "35-44": 0.17, "45-54": 0.16, "55-64": 0.17,
              "65-80": 0.20}
GENDERS = {"female": 0.50, "male": 0.48, "non-binary": 0.02}
INCOMES = {"under $30k": 0.25, "$30k-$75k": 0.35, "$75k-$150k": 0.28, "over $150k": 0.12}
IGNORED_GENRES = {"unknown", ""}
SEED_EXAMPLE = ("Maria is a 41-year-old nurse from Ohio who works night shifts at a city "
                "hospital. She earns a modest salary, budgets carefully and rarely pays for more "
                "than one streaming service. On her days off she unwinds with long films, reads "
                "reviews before choosing and dislikes anything too violent. She dresses "
                "practically and likes things that are reliable rather than trendy.")
WRITE_MARK = "Write a short persona"
PRONOUNS = {"female": (r"\b(he|him|his|himself)\b", r"\b(she|her|hers|herself)\b"),
            "male": (r"\b(she|her|hers|herself)\b", r"\b(he|him|his|himself)\b")}


@dataclass
class Persona:
    """One simulated user.

    Attributes
    ----------
    index : int
        Position in the population (``pid`` is ``p<index>``).
    age_group, gender, income : str
        Sampled demographics.
    genres : list of str
        Favourite genres (categories).
    intent : str
        What the persona wants from its sessions.
    anchor : int or None
        Internal user id of the run's split this persona stands for (None: cold start).
    text : str
        The written persona.
    source : {"llm", "template"}
        Who wrote ``text`` (``template`` after failed validations).
    seed_items : list of int
        Cold start: items whose text is nearest the persona's text (its seeded history).

    """

    index: int
    age_group: str
    gender: str
    income: str
    genres: list[str]
    intent: str
    anchor: int | None = None
    text: str = ""
    source: str = "template"
    seed_items: list[int] = field(default_factory=list)

    @property
    def pid(self) -> str:
        """The persona's user id in the written files."""
        return f"p{self.index:03d}"

    def fields(self) -> str:
        """The sampled fields, one per line (authoritative in every prompt)."""
        return (f"Age: {self.age_group}\nGender: {self.gender}\nIncome: {self.income}\n"
                f"Favourite genres: {', '.join(self.genres)}\nIntent: {self.intent}")

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return {"pid": self.pid, "age_group": self.age_group, "gender": self.gender,
                "income": self.income, "genres": self.genres, "intent": self.intent,
                "anchor": self.anchor, "text": self.text, "source": self.source,
                "seed_items": self.seed_items}


def _draw(rng: np.random.Generator, ratios: dict[str, float]) -> str:
    keys = list(ratios)
    p = np.array([ratios[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def favourite_genres(items: np.ndarray, texts: list[ItemText], top: int = 2) -> list[str]:
    """The ``top`` most frequent genres among ``items`` (ties: alphabetical)."""
    counts = Counter(g for i in items for g in texts[int(i)].genres if g not in IGNORED_GENRES)
    return [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def intent_for(genres: list[str], noun: str) -> str:
    """The persona's intent from its genres, e.g. ``find a Comedy or Drama movie to enjoy``."""
    what = " or ".join(genres) if genres else "good"
    return f"find a {what} {noun} to enjoy this week"


def sample_personas(n: int, seed: int, texts: list[ItemText], train_rows: list[np.ndarray],
                    anchors: np.ndarray | None, noun: str = "movie",
                    n_genres: int = 2) -> list[Persona]:
    """Draw ``n`` personas' demographics and intents (no text yet).

    Parameters
    ----------
    n : int
        Population size.
    seed : int
        Seed of every draw.
    texts : list of ItemText
        Item text by internal id (genres).
    train_rows : list of np.ndarray
        Training items of each anchor (unused for cold start).
    anchors : np.ndarray or None
        Internal user ids the personas stand for; None: cold-start personas whose genres are
        drawn in proportion to how many items carry them.
    noun : str
        What the catalogue holds (``movie``, ``product``).
    n_genres : int
        Favourite genres per persona.

    Returns
    -------
    list of Persona

    """
    rng = np.random.default_rng([seed, PERSONA_SALT])
    catalogue = Counter(g for t in texts for g in t.genres if g not in IGNORED_GENRES)
    names = sorted(catalogue)
    weights = np.array([catalogue[g] for g in names], np.float64)
    out = []
    for k in range(n):
        age, gender, income = _draw(rng, AGE_GROUPS), _draw(rng, GENDERS), _draw(rng, INCOMES)
        if anchors is not None:
            genres = favourite_genres(train_rows[k], texts, n_genres)
        elif names:
            pick = rng.choice(len(names), size=min(n_genres, len(names)), replace=False,
                              p=weights / weights.sum())
            genres = [names[int(i)] for i in pick]
        else:
            genres = []
        out.append(Persona(k, age, gender, income, genres, intent_for(genres, noun),
                           None if anchors is None else int(anchors[k])))
    return out


def persona_prompt(p: Persona, example: str, noun: str) -> str:
    """The prompt that asks the LLM to write persona ``p`` (UXAgent's generator)."""
    return (f"{WRITE_MARK} of a new person who picks a {noun} on a website. Here is a persona "
            f"of someone else, as an example of the style only:\n{example}\n\nNow describe "
            "the new person in about 60 words, third person: background, financial situation, "
            "habits, professional life and personal style. Use a new name and keep these facts "
            f"exactly:\n{p.fields()}")


def template_text(p: Persona, noun: str) -> str:
    """The fallback persona text, built from the fields alone."""
    pron = {"female": "She", "male": "He"}.get(p.gender, "They")
    verb = "likes" if pron != "They" else "like"
    return (f"A {p.gender} adult aged {p.age_group} with an income {p.income}. {pron} {verb} "
            f"{' and '.join(p.genres) or 'many kinds of'} {noun}s and wants to {p.intent}.")


def validate(p: Persona, text: str) -> list[str]:
    """Contradictions between a written text and the persona's fields (empty: consistent)."""
    problems = []
    if len(text.split()) < 12:
        problems.append("too short")
    low = text.lower()
    if p.gender in PRONOUNS:
        wrong, right = PRONOUNS[p.gender]
        if re.search(wrong, low) and not re.search(right, low):
            problems.append(f"pronouns contradict gender {p.gender}")
    low_age, _, high_age = p.age_group.partition("-")
    for m in re.finditer(r"\b(\d{2})[- ]year[- ]old\b|\baged? (\d{2})\b", low):
        age = int(m.group(1) or m.group(2))
        if not int(low_age) <= age <= int(high_age):
            problems.append(f"age {age} outside {p.age_group}")
    return problems


def write_personas(personas: list[Persona], llm: LLM, seed: int, *, noun: str = "movie",
                   wave: int = 16, retries: int = 1, temperature: float = 0.7,
                   max_new_tokens: int = 90) -> dict[str, int]:
    """Let the LLM write every persona's text, in waves; validate and regenerate.

    Wave ``w`` shows each persona a randomly chosen persona of an earlier wave as the example
    (the first wave: :data:`SEED_EXAMPLE`). Each attempt samples with ``temperature`` and seed
    ``(seed, wave, attempt)``; texts that fail :func:`validate` are retried, then replaced by
    :func:`template_text`.

    Returns
    -------
    dict
        ``{"llm": n, "template": m, "retries": r}``: who wrote how many, and regenerations.

    """
    rng = np.random.default_rng([seed, PERSONA_SALT, 1])
    done: list[Persona] = []
    counts = {"llm": 0, "template": 0, "retries": 0}
    for w, start in enumerate(range(0, len(personas), wave)):
        todo = personas[start:start + wave]
        examples = [SEED_EXAMPLE if not done else done[int(rng.integers(len(done)))].text
                    for _ in todo]
        for attempt in range(retries + 1):
            if not todo:
                break
            counts["retries"] += len(todo) if attempt else 0
            prompts = [persona_prompt(p, ex, noun) for p, ex in zip(todo, examples, strict=True)]
            texts = llm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=seed * 1000 + w * 10 + attempt, desc="personas")
            left, left_ex = [], []
            for p, ex, text in zip(todo, examples, texts, strict=True):
                text = " ".join(text.split())
                if validate(p, text):
                    left.append(p)
                    left_ex.append(ex)
                else:
                    p.text, p.source = text, "llm"
            todo, examples = left, left_ex
        for p in todo:
            p.text, p.source = template_text(p, noun), "template"
        batch = personas[start:start + wave]
        counts["llm"] += sum(p.source == "llm" for p in batch)
        counts["template"] += sum(p.source == "template" for p in batch)
        done.extend(p for p in batch if p.source == "llm")
    return counts


def seed_items(persona_emb: np.ndarray, item_emb: np.ndarray, k: int = 5) -> np.ndarray:
    """Cold start: the ``k`` items whose text embedding is nearest the persona's (cosine).

    Both inputs have unit rows, so ``item_emb @ persona_emb`` is the cosine; ties keep the lower
    item id. The items become the persona's seeded history (its user vector is folded in).
    """
    sim = item_emb @ persona_emb
    return np.argsort(-sim, kind="stable")[:k]
