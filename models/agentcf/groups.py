"""AgentCF++ interest groups: LLM tags -> sentence encoder -> k-means -> the largest groups.

1. :func:`tag_users`: the LLM tags each user's interests from the user's memories (on the
   user's node in a federation; only the tags leave it).
2. :func:`build_groups`: the distinct tags are embedded and clustered with k-means
   (``scipy.cluster.vq.kmeans2``, k-means++ start, seeded); the ``n_groups`` clusters with the
   most member users become the groups; a user joins every group holding one of its tags; a
   group is named by its most frequent tag (the authors ask the LLM for a name).
3. :func:`group_memories`: per group and domain, the titles of the members' most recent
   **training** interactions, newest first.
4. :func:`closest` picks, by TF-IDF cosine, the group memory nearest the user's memory.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from florec.models.agentcf.memory import UserMemory
from florec.models.agentcf.prompts import parse_tags, tags_prompt

GROUP_PREFIX = "Users with tastes like mine recently chose:"


@dataclass
class Groups:
    """Interest groups.

    Attributes
    ----------
    members : list of set
        User ids of each group (largest first).
    names : list of str
        Each group's most frequent tag.
    tags : dict
        User id -> tags (what the nodes sent).

    """

    members: list[set[int]]
    names: list[str]
    tags: dict[int, list[str]]

    def of_user(self, user: int) -> list[int]:
        """Indices of the groups the user belongs to."""
        return [g for g, m in enumerate(self.members) if user in m]


def tag_prompt_of(memory: UserMemory, domains: Sequence[str]) -> str:
    """The tagging prompt of one user (dual: every M_u^d labelled by its domain)."""
    if memory.dual:
        texts = [f"{domains[d]}: {memory.separated[d]}" for d in sorted(memory.separated)]
    else:
        texts = [memory.shared]
    return tags_prompt(texts)


def tag_users(llm, memories: dict[int, UserMemory], domains: Sequence[str], *,
              temperature: float, seed: int, max_new_tokens: int = 48
              ) -> dict[int, list[str]]:
    """Interest tags of each user (one generation per user)."""
    users = sorted(memories)
    answers = llm.generate([tag_prompt_of(memories[u], domains) for u in users],
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           desc="agentcf tags")
    return {u: parse_tags(a) for u, a in zip(users, answers, strict=True)}


def build_groups(tags: dict[int, list[str]], encoder, k: int, n_groups: int,
                 seed: int) -> Groups:
    """Cluster the distinct tags and keep the ``n_groups`` clusters with most users.

    Parameters
    ----------
    tags : dict
        User id -> tags.
    encoder : object
        Has ``encode(texts) -> (n, d)`` unit vectors (MiniLM in runs, ``tiny`` in tests).
    k : int
        k-means clusters (capped at the number of distinct tags).
    n_groups : int
        Groups kept.
    seed : int
        k-means seed: equal seeds give equal groups.

    """
    vocab = sorted({t for ts in tags.values() for t in ts})
    if not vocab:
        return Groups([], [], tags)
    vectors = np.asarray(encoder.encode(vocab), np.float64)
    k = max(1, min(k, len(vocab)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "One of the clusters is empty": fine, it is dropped
        _, label = kmeans2(vectors, k, minit="++", seed=np.random.default_rng(seed))
    cluster_of = dict(zip(vocab, label.tolist(), strict=True))
    members: dict[int, set[int]] = {}
    counts: dict[int, Counter] = {}
    for user, ts in tags.items():
        for t in ts:
            members.setdefault(cluster_of[t], set()).add(user)
            counts.setdefault(cluster_of[t], Counter())[t] += 1
    order = sorted(members, key=lambda c: (-len(members[c]), c))[:n_groups]
    names = [min(counts[c].items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in order]
    return Groups([members[c] for c in order], names, tags)


def group_memories(groups: Groups, recent: dict[int, list[tuple[int, float]]],
                   item_domain: np.ndarray, titles: Sequence[str], per_member: int = 3,
                   max_titles: int = 10) -> list[dict[int, str]]:
    """Per group and domain: the titles of the members' most recent training items.

    Titles are ordered by how many members chose them recently, then newest first (the
    group's current favourites lead).

    Parameters
    ----------
    groups : Groups
        The groups.
    recent : dict
        User id -> ``[(item, time), ...]`` training interactions (training data only: no
        leakage from the test period).
    item_domain : np.ndarray
        Domain of each item.
    titles : sequence of str
        Item titles.
    per_member, max_titles : int
        Recent items taken from each member per domain, titles kept per memory.

    """
    out = []
    for members in groups.members:
        by_domain: dict[int, list[tuple[float, int]]] = {}
        for u in members:
            per: dict[int, list[tuple[float, int]]] = {}
            for item, t in recent.get(u, []):
                per.setdefault(int(item_domain[item]), []).append((t, item))
            for d, rows in per.items():
                by_domain.setdefault(d, []).extend(sorted(rows)[-per_member:])
        texts = {}
        for d, rows in by_domain.items():
            count = Counter(i for _, i in rows)
            newest = {i: t for t, i in sorted(rows)}
            order = sorted(count, key=lambda i: (-count[i], -newest[i], i))
            texts[d] = f"{GROUP_PREFIX} " + "; ".join(titles[i] for i in order[:max_titles])
        out.append(texts)
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tfidf_cosines(query: str, docs: Sequence[str]) -> np.ndarray:
    r"""Cosine of TF-IDF vectors of ``query`` and each doc.

    ``w(t, x) = tf(t, x) * (1 + log((1 + N) / (1 + df(t))))`` over the ``N = len(docs) + 1``
    texts (smoothed idf, as scikit-learn's default), then
    ``cos(q, d) = <w_q, w_d> / (||w_q|| ||w_d||)`` (0 for an empty text).
    """
    texts = [Counter(_words(t)) for t in (query, *docs)]
    df = Counter(w for c in texts for w in c)
    n = len(texts)
    idf = {w: 1 + math.log((1 + n) / (1 + f)) for w, f in df.items()}
    vecs = [{w: c * idf[w] for w, c in tc.items()} for tc in texts]
    norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]
    q, qn = vecs[0], norms[0]
    out = np.zeros(len(docs))
    for j, (vec, dn) in enumerate(zip(vecs[1:], norms[1:], strict=True)):
        if qn > 0 and dn > 0:
            out[j] = sum(q[w] * vec.get(w, 0.0) for w in q) / (qn * dn)
    return out


def closest(query: str, docs: Sequence[str]) -> int:
    """Index of the doc with the largest TF-IDF cosine to ``query`` (first on ties; -1: none)."""
    if not docs:
        return -1
    return int(np.argmax(tfidf_cosines(query, docs)))
