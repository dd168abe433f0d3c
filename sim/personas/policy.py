"""The scripted persona policy: a persona of known preference (the positive control).

The persona reads the list top down, but only the first ``patience`` items (3 by default); it
picks the first whose genres include one of its favourite genres and clicks it with
probability ``p_match`` (0.9); when none of those items matches, it picks the first and clicks
with probability ``p_other`` (0.1). A recommender that ranks the persona's genres first must
therefore get a higher click-through than a random order: for ``g`` the share of catalogue
items in the persona's genres, a random list has a match among its first three with
probability ``1 - (1 - g)^3``, a genre-first list always.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from florec.models.llm.base import LLM
from florec.models.llm.config import LLMConfig
from florec.models.llm.factory import build_llm
from florec.sim.personas.agent import CHOICE_MARK, CLICK_MARK, IMPORTANCE_MARK, REASON_MARK
from florec.sim.personas.persona import WRITE_MARK

LINE = re.compile(r"^([A-J])\. (.*)$", re.M)


def _favourites(prompt: str) -> set[str]:
    m = re.search(r"^Favourite genres: (.*)$", prompt, re.M)
    return {g.strip() for g in m.group(1).split(",") if g.strip()} if m else set()


def _genres(line: str) -> set[str]:
    _, _, rest = line.partition("| Genres: ")
    if not rest:
        _, _, rest = line.partition("| Categories: ")
    return {g.strip() for g in rest.split("|")[0].split(",") if g.strip()}


def genre_policy(patience: int = 3, p_match: float = 0.9,
                 p_other: float = 0.1) -> Callable[[str, int, np.random.Generator], np.ndarray]:
    """The letter rule of a persona that likes its favourite genres (see the module docstring).

    Returns
    -------
    callable
        A :data:`florec.models.llm.scripted.ChoiceRule` answering the choice, click and
        importance prompts of :mod:`florec.sim.personas.agent`.

    """
    def rule(prompt: str, n_choices: int, rng: np.random.Generator) -> np.ndarray:
        fav = _favourites(prompt)
        q = np.zeros(n_choices)
        if CHOICE_MARK in prompt:
            lines = [line for letter, line in LINE.findall(prompt)][:n_choices]
            match = [j for j, line in enumerate(lines[:patience]) if _genres(line) & fav]
            q[match[0] if match else 0] = 1.0
        elif CLICK_MARK in prompt:
            line = prompt.split(CLICK_MARK, 1)[1].splitlines()[0]
            p = p_match if _genres(line) & fav else p_other
            q[:2] = (p, 1.0 - p)
        elif IMPORTANCE_MARK in prompt:
            q[min(5, n_choices - 1)] = 1.0
        else:
            q[:] = 1.0
        return q + 1e-9
    return rule


def genre_text(prompt: str) -> str:
    """Text answers: a persona from its fields, or a reason naming the genre match."""
    fav = ", ".join(sorted(_favourites(prompt))) or "anything"
    if prompt.startswith(WRITE_MARK):
        gender = re.search(r"^Gender: (.*)$", prompt, re.M)
        pron = {"female": "She", "male": "He"}.get(gender.group(1) if gender else "", "They")
        return (f"A careful viewer who plans evenings ahead and keeps to a budget. {pron} "
                f"mostly enjoys {fav} and reads a short description before choosing.")
    if REASON_MARK in prompt:
        line = prompt.split("You looked at: ", 1)[1].splitlines()[0]
        match = bool(_genres(line) & _favourites(prompt))
        if "You clicked it" in prompt:
            return f"It is {fav}, the kind of thing I like." if match else \
                "Not my usual taste, but I gave it a try."
        if match:
            return f"It is {fav}, but I was not in the mood today."
        return f"Nothing near the top was {fav}, which is what I wanted."
    return "ok"


def scripted_persona_llm(seed: int = 0, patience: int = 3, cache: bool = False) -> LLM:
    """The scripted backend running :func:`genre_policy` and :func:`genre_text`."""
    cfg = LLMConfig(backend="scripted", seed=seed, cache=cache, progress=False)
    return build_llm(cfg, scripted_rule=genre_policy(patience), scripted_text=genre_text,
                     scripted_name=f"persona-genre-patience{patience}")
