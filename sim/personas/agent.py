"""A persona agent: its memory stream and the three prompts of a session step.

A step (one session) asks the LLM three things about the recommender's list: which item the
persona would pick (letter distribution over the list), whether it clicks that item or skips
the page (letters A = click, B = skip), and, in one sentence, why. Every prompt starts with the
persona's sampled fields (authoritative), a short version of its written text and the memories
retrieved for this list. The :mod:`~florec.sim.personas.policy` scripted rules parse exactly
these prompts, so the markers below are part of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from florec.sim.personas.memory import ACT_WEIGHTS, MemoryStream
from florec.sim.personas.persona import Persona

CHOICE_MARK = "Which one would you most like to"
CLICK_MARK = "You are looking at:"
REASON_MARK = "In one sentence"
IMPORTANCE_MARK = "How important is this memory"
ABOUT_WORDS = 60


@dataclass
class Agent:
    """A persona with its memory stream and the items it clicked."""

    persona: Persona
    memory: MemoryStream = field(default_factory=MemoryStream)
    clicks: list[int] = field(default_factory=list)
    shown: set[int] = field(default_factory=set)

    def header(self) -> str:
        """Who the persona is: its fields and (at most 60 words of) its text."""
        words = self.persona.text.split()
        about = " ".join(words[:ABOUT_WORDS]) + (" ..." if len(words) > ABOUT_WORDS else "")
        return f"You are this person.\n{self.persona.fields()}\nAbout you: {about}"

    def recall(self, query: np.ndarray, now: int, n: int) -> list[str]:
        """Texts of the ``n`` memories UXAgent's acting retrieval ranks first (recent forced)."""
        if n <= 0:
            return []
        return [m.text for m in self.memory.retrieve(query, now, n, ACT_WEIGHTS,
                                                     force_recent=False)]


def memory_block(memories: list[str]) -> str:
    """The prompt lines of recalled memories (empty when there are none)."""
    if not memories:
        return ""
    return "What you remember:\n" + "\n".join(f"- {m}" for m in memories) + "\n"


def choice_prompt(agent: Agent, lines: list[str], memories: list[str], noun: str) -> str:
    """Which listed item the persona would pick (answer: one letter)."""
    listed = "\n".join(f"{chr(65 + j)}. {line}" for j, line in enumerate(lines))
    return (f"{agent.header()}\n{memory_block(memories)}The website recommends these "
            f"{noun}s:\n{listed}\n{CHOICE_MARK} choose? Answer with one letter.")


def click_prompt(agent: Agent, line: str, memories: list[str], noun: str) -> str:
    """Whether the persona clicks the item it picked (A) or skips the page (B)."""
    return (f"{agent.header()}\n{memory_block(memories)}{CLICK_MARK} {line}\n"
            f"Do you click this {noun}, or skip these recommendations? Answer with one letter.\n"
            "A. Click it\nB. Skip")


def reason_prompt(agent: Agent, line: str, clicked: bool) -> str:
    """The persona's reason for its decision (free text)."""
    did = "clicked it" if clicked else "skipped the recommendations"
    return (f"{agent.header()}\nYou looked at: {line}\nYou {did}. {REASON_MARK}, say why, in "
            "the first person.")


def importance_prompt(agent: Agent, text: str) -> str:
    """UXAgent's importance rating, as letters A (1) .. J (10)."""
    return (f"{agent.header()}\nMemory: {text}\n{IMPORTANCE_MARK} to you, from A (1, trivial) "
            "to J (10, life-changing)? Answer with one letter.")
