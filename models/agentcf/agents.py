"""The AgentCF training loop: forward choice, then collaborative reflection of users and items.

One *step* processes one training interaction of each user in a batch (every user's interactions
in time order), with four batched LLM phases:

1. **decide**: the user agent sees its memory (AgentCF: the shared memory; AgentCF++: only the
   fused F_u^d of the interaction's domain d) and the two item descriptions (the positive and a
   same-domain negative, in a seeded order) and answers a letter; the pick is the letter with
   the larger probability (``choice_distribution``).
2. **user reflection**: the user rewrites its memory (AgentCF: shared; AgentCF++: M_u^d),
   <= 150 words, told whether its pick was right.
3. **fusion** (AgentCF++ only): all M_u^d' and the old F_u^d -> new F_u^d (<= 180 words).
4. **item reflection**: the positive and the negative item each rewrite their description
   (<= 50 words) from the user's view of domain d.

:func:`user_side_step` runs phases 1-4 and *returns* the new item descriptions, so the same code
runs centrally and on a federated node (whose item texts travel up). Generation uses
``temperature`` with a seed per call, so cached replays are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from florec.models.agentcf.memory import (
    FUSED_WORDS,
    ITEM_WORDS,
    USER_WORDS,
    UserMemory,
    clean_answer,
)
from florec.models.agentcf.prompts import (
    decide_prompt,
    fuse_prompt,
    item_reflection_prompt,
    user_reflection_prompt,
)
from florec.recdata.seeds import Salt, stream


@dataclass(frozen=True)
class AgentSettings:
    """How the agents talk to the LLM.

    Attributes
    ----------
    dual : bool
        AgentCF++'s dual-layer memory (False: AgentCF's single memory).
    temperature : float
        Sampling temperature of every generation (the authors': 0.7).
    max_new_tokens : int
        Longest answer of a reflection or fusion.
    seed : int
        Run seed (negatives, candidate order and the per-call sampling seeds).

    """

    dual: bool = False
    temperature: float = 0.7
    max_new_tokens: int = 160
    seed: int = 0

    def call_seed(self, step: int, phase: int) -> int:
        """The sampling seed of one batched call (step, phase)."""
        return int(stream(self.seed, Salt.AGENTCF_CALL, step, phase).integers(2**31))


@dataclass(frozen=True)
class Interaction:
    """One training interaction of the forward step."""

    user: int
    pos: int
    neg: int
    domain: int


def sample_negative(user: int, step: int, domain_items: np.ndarray, seen: set[int],
                    seed: int) -> int:
    """A random same-domain item the user never interacted with (seeded by user and step)."""
    rng = stream(seed, Salt.AGENTCF_TRAIN_NEGATIVE, user, step)
    pool = domain_items[~np.isin(domain_items, list(seen))]
    if len(pool) == 0:
        raise ValueError(f"user {user} has seen every item of its domain; no negative exists")
    return int(rng.choice(pool))


def user_side_step(llm, memories: dict[int, UserMemory], batch: Sequence[Interaction],
                   describe: Callable[[int], str], titles: Sequence[str], domains: Sequence[str],
                   settings: AgentSettings, step: int) -> tuple[list[tuple[int, str]], int]:
    """Phases 1-4 for one batch (at most one interaction per user).

    Parameters
    ----------
    llm : LLM
        The user's LLM (on the user's node in a federation).
    memories : dict
        User id -> :class:`UserMemory` (updated in place).
    batch : sequence of Interaction
        This step's interactions.
    describe : callable
        Item id -> current item description (title first).
    titles : sequence of str
        Item titles.
    domains : sequence of str
        Domain names.
    settings : AgentSettings
        Memory layout and sampling.
    step : int
        Step index (seeds the candidate order and the calls).

    Returns
    -------
    updates : list of (item, text)
        New learned descriptions of the positive and negative items, in batch order.
    correct : int
        Forward picks that matched the positive.

    """
    if not batch:
        return [], 0
    # the candidate order of each user's choice, keyed by (seed, step, user) and not by its
    # place in the batch: a node's batch holds only its users, and the order moves a real LLM
    flips = [stream(settings.seed, Salt.AGENTCF_PAIR_ORDER, step, x.user).random() < 0.5
             for x in batch]
    pairs = [(x.neg, x.pos) if f else (x.pos, x.neg) for x, f in zip(batch, flips, strict=True)]
    descs = [[describe(a), describe(b)] for a, b in pairs]
    names = [domains[x.domain] for x in batch]
    probs = llm.choice_distribution(
        [decide_prompt(memories[x.user].view(x.domain), d, n)
         for x, d, n in zip(batch, descs, names, strict=True)], 2, desc="agentcf decide")
    chosen = [pairs[k][int(np.argmax(probs[k]))] for k in range(len(batch))]
    correct = sum(int(c == x.pos) for c, x in zip(chosen, batch, strict=True))

    gen = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
    answers = llm.generate(
        [user_reflection_prompt(memories[x.user].domain_memory(x.domain), d, titles[c],
                                titles[x.pos], titles[x.neg], n, USER_WORDS)
         for x, d, c, n in zip(batch, descs, chosen, names, strict=True)],
        seed=settings.call_seed(step, 1), desc="agentcf user reflection", **gen)
    for x, a in zip(batch, answers, strict=True):
        memories[x.user].set_reflection(x.domain, clean_answer(a, USER_WORDS))

    if settings.dual:
        fused = llm.generate(
            [fuse_prompt({domains[d]: memories[x.user].separated[d]
                          for d in sorted(memories[x.user].separated)},
                         memories[x.user].view(x.domain), n, FUSED_WORDS)
             for x, n in zip(batch, names, strict=True)],
            seed=settings.call_seed(step, 2), desc="agentcf fusion", **gen)
        for x, a in zip(batch, fused, strict=True):
            memories[x.user].set_fused(x.domain, clean_answer(a, FUSED_WORDS))

    targets = [(x, item, liked) for x in batch for item, liked in ((x.pos, True), (x.neg, False))]
    item_answers = llm.generate(
        [item_reflection_prompt(memories[x.user].view(x.domain),
                                [describe(x.pos), describe(x.neg)], titles[x.pos],
                                titles[x.neg], titles[item], describe(item), liked, ITEM_WORDS)
         for x, item, liked in targets],
        seed=settings.call_seed(step, 3), desc="agentcf item reflection", **gen)
    updates = [(item, clean_answer(a, ITEM_WORDS))
               for (_, item, _), a in zip(targets, item_answers, strict=True)]
    return updates, correct


def training_steps(train: dict[int, list[tuple[int, float]]], users: Sequence[int],
                   cap: int = 0) -> list[list[tuple[int, int]]]:
    """The schedule: step t holds the t-th training interaction of every user that has one.

    ``cap > 0`` keeps each user's ``cap`` most recent training interactions. Returns, per step,
    ``(user, item)`` pairs in user order.
    """
    seqs = {u: [i for i, _ in train.get(u, [])] for u in users}
    if cap > 0:
        seqs = {u: s[-cap:] for u, s in seqs.items()}
    n_steps = max((len(s) for s in seqs.values()), default=0)
    return [[(u, s[t]) for u, s in seqs.items() if t < len(s)] for t in range(n_steps)]
