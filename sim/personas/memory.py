r"""A persona agent's memory stream, with UXAgent's retrieval score.

Each piece of memory has a kind (observation, action, plan, thought, reflection), the step
(session) it was written at, a unit-norm embedding and an importance in [0, 1]. Retrieval for a
query embedding ``e_q`` at step ``t_now`` scores every piece by

.. math:: s(m) = \left(e_q \cdot e_m + \exp(-(t_{now} - t_m)) + \mathrm{imp}_m\right)
          \, w_{kind(m)}

and returns the top ``n`` (UXAgent's form, kept as is: the recency term fades within about
five steps, pitfall 1 of the spec), optionally forcing in the observations of the last 3 steps
and the actions, plans and thoughts of the last 5 before the scored ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("observation", "action", "plan", "thought", "reflection")
#: UXAgent's kind weights when planning (observation x1, the rest x10).
PLAN_WEIGHTS = {"observation": 1.0, "action": 10.0, "plan": 10.0, "thought": 10.0,
                "reflection": 10.0}
#: UXAgent's kind weights when acting (observation x0, action and thought x10).
ACT_WEIGHTS = {"observation": 0.0, "action": 10.0, "plan": 1.0, "thought": 10.0,
               "reflection": 1.0}
#: Importance by kind when the LLM does not rate it (FloRec's default; see the method page).
KIND_IMPORTANCE = {"observation": 0.2, "action": 0.6, "plan": 0.4, "thought": 0.4,
                   "reflection": 0.8}
#: Forced-recent windows in steps: observations of the last 3, actions/plans/thoughts of 5.
RECENT_WINDOWS = {"observation": 3, "action": 5, "plan": 5, "thought": 5}


@dataclass(frozen=True)
class Memory:
    """One piece of memory.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    text : str
        What the agent remembers.
    step : int
        The step (session) it was written at.
    embedding : np.ndarray
        Unit-norm text embedding.
    importance : float
        In [0, 1] (UXAgent: the LLM's 0-10 rating divided by 10).

    """

    kind: str
    text: str
    step: int
    embedding: np.ndarray = field(repr=False)
    importance: float


class MemoryStream:
    """The ordered memories of one agent."""

    def __init__(self) -> None:
        self.pieces: list[Memory] = []

    def add(self, kind: str, text: str, step: int, embedding: np.ndarray,
            importance: float) -> Memory:
        """Append a piece; ``ValueError`` for an unknown kind or importance outside [0, 1]."""
        if kind not in KINDS:
            raise ValueError(f"memory kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
        if not 0.0 <= importance <= 1.0:
            raise ValueError(f"importance {importance} is outside [0, 1]; divide a 0-10 rating "
                             "by 10")
        piece = Memory(kind, text, int(step), np.asarray(embedding, np.float32), float(importance))
        self.pieces.append(piece)
        return piece

    def __len__(self) -> int:
        return len(self.pieces)

    def scores(self, query: np.ndarray, now: int, weights: dict[str, float]) -> np.ndarray:
        """The retrieval score of every piece (the formula in the module docstring)."""
        if not self.pieces:
            return np.zeros(0)
        emb = np.stack([m.embedding for m in self.pieces])
        sim = emb @ np.asarray(query, np.float32)
        age = now - np.array([m.step for m in self.pieces], np.float64)
        imp = np.array([m.importance for m in self.pieces])
        w = np.array([weights.get(m.kind, 1.0) for m in self.pieces])
        return (sim + np.exp(-age) + imp) * w

    def retrieve(self, query: np.ndarray, now: int, n: int = 20,
                 weights: dict[str, float] | None = None,
                 force_recent: bool = False) -> list[Memory]:
        """The ``n`` best pieces for ``query`` at step ``now``, best first.

        Parameters
        ----------
        query : np.ndarray
            Unit-norm query embedding.
        now : int
            The current step.
        n : int
            How many pieces to return (forced-recent ones count towards ``n``).
        weights : dict, optional
            Kind weights (default :data:`PLAN_WEIGHTS`).
        force_recent : bool
            Put the pieces inside :data:`RECENT_WINDOWS` first (newest first), then fill by
            score.

        Returns
        -------
        list of Memory
            At most ``n`` pieces; ties keep insertion order.

        """
        scores = self.scores(query, now, weights or PLAN_WEIGHTS)
        order = sorted(range(len(self.pieces)), key=lambda i: (-scores[i], i))
        chosen: list[int] = []
        if force_recent:
            recent = [i for i, m in enumerate(self.pieces)
                      if now - m.step < RECENT_WINDOWS.get(m.kind, 0)]
            chosen = sorted(recent, key=lambda i: (-self.pieces[i].step, i))[:n]
        chosen += [i for i in order if i not in chosen][:max(n - len(chosen), 0)]
        return [self.pieces[i] for i in chosen]
