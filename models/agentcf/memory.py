"""Agent memories: a user's (one shared text, or AgentCF++'s dual layer) and the items'.

Word limits are enforced on every write, whatever the LLM answered: user memory <= 150 words,
fused memory <= 180, item memory <= 50 (the authors' limits). A user memory serialises to a
plain dict, so a node store can keep it (it never enters a message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

USER_WORDS = 150
FUSED_WORDS = 180
ITEM_WORDS = 50
INITIAL_USER = "I have not bought anything yet, so my preferences are still unknown."

_PREFIX = re.compile(
    r"^\s*(my updated self-introduction|my deduced preference|updated self-introduction|"
    r"the updated description( of the (first|second) item)?( is)?|updated description|"
    r"description|self-introduction)\s*[:\-]\s*", re.IGNORECASE)


def limit_words(text: str, n: int) -> str:
    """The first ``n`` whitespace-separated words of ``text`` (whitespace collapsed)."""
    return " ".join(text.split()[:n])


def clean_answer(text: str, n_words: int) -> str:
    """An LLM answer as memory text: a leading label stripped, quotes trimmed, <= ``n_words``."""
    text = _PREFIX.sub("", text.strip()).strip().strip("'\"[]").strip()
    return limit_words(text, n_words)


@dataclass
class UserMemory:
    """One user agent's memory.

    Attributes
    ----------
    dual : bool
        AgentCF++'s dual layer (per-domain ``separated`` M_u^d and ``fused`` F_u^d) instead of
        one ``shared`` text (AgentCF).
    shared : str
        AgentCF's short-term memory (the self-introduction).
    separated, fused : dict
        Domain id -> M_u^d / F_u^d (dual only).
    log : list
        Long-term memory: ``(domain, text)`` for every replaced short-term version (used by
        inference strategy B+R).

    """

    dual: bool
    shared: str = INITIAL_USER
    separated: dict[int, str] = field(default_factory=dict)
    fused: dict[int, str] = field(default_factory=dict)
    log: list[tuple[int, str]] = field(default_factory=list)

    def view(self, domain: int) -> str:
        """What a decision / item reflection / ranking prompt of ``domain`` may see.

        Dual: F_u^d only (never another domain's M_u^d'); shared: the one memory.
        """
        return self.fused.get(domain, INITIAL_USER) if self.dual else self.shared

    def domain_memory(self, domain: int) -> str:
        """M_u^d (dual) or the shared memory: the text the user reflection rewrites."""
        return self.separated.get(domain, INITIAL_USER) if self.dual else self.shared

    def set_reflection(self, domain: int, text: str) -> None:
        """Store the user reflection's new M_u^d (or shared memory), logging the old one."""
        text = limit_words(text, USER_WORDS)
        self.log.append((domain, self.domain_memory(domain)))
        if self.dual:
            self.separated[domain] = text
        else:
            self.shared = text

    def set_fused(self, domain: int, text: str) -> None:
        """Store the fusion step's new F_u^d (dual only)."""
        if not self.dual:
            raise ValueError("a shared memory has no fused layer; build UserMemory(dual=True)")
        self.fused[domain] = limit_words(text, FUSED_WORDS)

    def history(self, domain: int) -> list[str]:
        """Long-term entries a B+R prompt of ``domain`` may see (dual: that domain's only)."""
        return [t for d, t in self.log if not self.dual or d == domain]

    def texts(self) -> list[str]:
        """Every text this memory holds (privacy checks scan messages for them)."""
        out = [self.shared, *self.separated.values(), *self.fused.values()]
        out += [t for _, t in self.log]
        return [t for t in out if t and t != INITIAL_USER]

    def to_dict(self) -> dict:
        """Plain-data form (node store)."""
        return {"dual": self.dual, "shared": self.shared,
                "separated": {str(k): v for k, v in self.separated.items()},
                "fused": {str(k): v for k, v in self.fused.items()},
                "log": [[d, t] for d, t in self.log]}

    @classmethod
    def from_dict(cls, data: dict) -> UserMemory:
        """Inverse of :meth:`to_dict`."""
        return cls(bool(data["dual"]), data["shared"],
                   {int(k): v for k, v in data["separated"].items()},
                   {int(k): v for k, v in data["fused"].items()},
                   [(int(d), t) for d, t in data["log"]])


class ItemMemories:
    """Item agents: one description per item, initialised from public metadata.

    The learned part (<= 50 words) follows the metadata, which stays first so titles remain
    matchable.
    """

    def __init__(self, item_text: list[str]) -> None:
        self.base = list(item_text)
        self.learned: dict[int, str] = {}

    def __getitem__(self, item: int) -> str:
        learned = self.learned.get(item)
        return self.base[item] if not learned else f"{self.base[item]}. {learned}"

    def update(self, item: int, text: str) -> None:
        """Set the learned part of the description (cut to 50 words)."""
        self.learned[item] = limit_words(text, ITEM_WORDS)
