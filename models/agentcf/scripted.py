"""The positive control's scripted LLM: an agent of known behaviour on synthetic styles.

On :func:`florec.recdata.domains.synthetic_multidomain` data every title starts with the item's
style word (``"cobalt book 17"``). The rules below read the prompts' layout
(:mod:`florec.models.agentcf.prompts`):

* **user reflection**: memory becomes ``"Likes: <style of the preferred item>, <older likes>"``
  (newest first, at most ``keep`` entries): a memory that is right about *what* was liked but
  does not say in which domain;
* **fusion** (AgentCF++): copies the target domain's separated memory (a fuser that knows which
  domain matters);
* **decide / rank**: each candidate scores ``sum_k 0.8^k [style == like_k]`` over the memory's
  likes, plus ``group_bonus * 0.8^j`` if its title is the j-th of the prompt's group memory;
  the letter distribution is ``softmax(beta * score)`` (equal scores: uniform, a random order);
* **tags**: ``"<domain> <most liked style>"`` per domain memory.

So a shared memory mixes the styles of all domains, while F_u^d holds domain d's only: the
dual layer must rank better, and the group memory must help when users follow their group's
recent items. The model's quality is fixed by these rules, so the measured gap shows the
plumbing (which memory reaches which prompt), not an LLM's skill.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from florec.models.agentcf.prompts import CANDIDATE
from florec.recdata.domains import STYLES

DECAY = 0.8
_LIKES = re.compile(r"Likes: ([a-z, ]+)")


def _kind(prompt: str) -> str:
    return prompt.split("\n", 1)[0].removeprefix("### ").strip()


def _field(prompt: str, tag: str) -> str:
    m = re.search(rf"^\[{tag}\] (.*)$", prompt, re.MULTILINE)
    return m.group(1) if m else ""


def likes(text: str) -> list[str]:
    """Styles listed in a ``Likes:`` memory, newest first."""
    m = _LIKES.search(text)
    return [s.strip() for s in m.group(1).split(",") if s.strip() in STYLES] if m else []


def _style(description: str) -> str:
    word = description.split(" ", 1)[0].lower()
    return word if word in STYLES else ""


def _title(description: str) -> str:
    return description.split(" | ", 1)[0].split(". ", 1)[0].strip()


def candidate_scores(prompt: str, group_bonus: float = 1.5) -> np.ndarray:
    """The control's score of each lettered candidate of a decide/rank prompt."""
    memory = likes(_field(prompt, "memory"))
    group = _field(prompt, "group")
    chosen = [t.strip() for t in group.split(":", 1)[-1].split(";")] if group else []
    scores = []
    for _, desc in CANDIDATE.findall(prompt):
        style = _style(desc)
        s = sum(DECAY ** k for k, like in enumerate(memory) if like == style)
        if group and _title(desc) in chosen:
            s += group_bonus * DECAY ** chosen.index(_title(desc))
        scores.append(s)
    return np.asarray(scores, np.float64)


def control_choice_rule(beta: float = 4.0):
    """The letter rule: ``softmax(beta * candidate_scores)`` over the shown letters."""

    def rule(prompt: str, n_choices: int, rng: np.random.Generator) -> np.ndarray:
        s = candidate_scores(prompt)[:n_choices]
        if len(s) < n_choices:
            s = np.r_[s, np.zeros(n_choices - len(s))]
        z = np.exp(beta * (s - s.max()))
        return z / z.sum()

    rule.__name__ = f"agentcf-control-b{beta:g}"
    return rule


def control_text_rule(keep: int = 12):
    """The text rule (reflections, fusion, tags, title ranking) described above."""

    def rule(prompt: str) -> str:
        kind = _kind(prompt)
        if kind == "user-reflection":
            m = re.search(r"^Preferred item: (.*)$", prompt, re.MULTILINE)
            style = _style(m.group(1)) if m else ""
            old = likes(_field(prompt, "memory"))
            new = ([style] if style else []) + old
            return "Likes: " + ", ".join(new[:keep]) + "."
        if kind == "fuse":
            target = _field(prompt, "target")
            m = re.search(rf"^- {re.escape(target)}: (.*)$", prompt, re.MULTILINE)
            return m.group(1) if m else _field(prompt, "fused")
        if kind == "item-reflection":
            return "Chosen by users whose tastes match its style."
        if kind == "tags":
            tags = []
            for line in re.findall(r"^\[memory\] (.*)$", prompt, re.MULTILINE):
                domain, _, text = line.rpartition(": Likes")
                counts = Counter(likes("Likes" + text if domain else line))
                if counts:
                    top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
                    tags.append(f"{domain} {top}".strip())
            return ", ".join(tags)
        if kind == "rank-titles":
            descs = [d for _, d in CANDIDATE.findall(prompt)]
            order = np.argsort(-candidate_scores(prompt), kind="stable")
            return "Rank:\n" + "\n".join(f"{r + 1}. {_title(descs[j])}"
                                         for r, j in enumerate(order))
        return "I have no opinion."

    rule.__name__ = f"agentcf-control-text-k{keep}"
    return rule
