"""Items grouped into domains for cross-domain methods (AgentCF++), and a multi-domain generator.

* Amazon-Scientific: the second-level category of UniSRec's category path, e.g.
  ``"Industrial & Scientific Tapes, Adhesives & Sealants Tapes ..."`` -> ``"Tapes, Adhesives &
  Sealants"`` (the path has no separators, so the names below are matched as prefixes).
* ML-100K / ML-1M: genres, each movie in the first of its genres (flag order) among the kept
  domains.
* :func:`synthetic_multidomain`: users whose taste ("style") in each domain is drawn
  independently of their other domains, with optional per-(domain, style) trending items that
  late interactions follow (the AgentCF++ positive control).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from florec.recdata.item_text import ItemText
from florec.recdata.seeds import Salt, stream

AMAZON_ROOT = "Industrial & Scientific"
#: Amazon's second-level categories under Industrial & Scientific (longest names first).
AMAZON_SECOND_LEVEL = tuple(sorted((
    "Abrasive & Finishing Products", "Additive Manufacturing Products", "Commercial Door Products",
    "Cutting Tools", "Fasteners", "Filtration", "Food Service Equipment & Supplies",
    "Hydraulics, Pneumatics & Plumbing", "Industrial Electrical", "Industrial Hardware",
    "Industrial Power & Hand Tools", "Janitorial & Sanitation Supplies",
    "Lab & Scientific Products", "Material Handling Products",
    "Occupational Health & Safety Products", "Packaging & Shipping Supplies",
    "Power Transmission Products", "Professional Dental Supplies",
    "Professional Medical Supplies", "Raw Materials", "Retail Store Fixtures & Equipment",
    "Robotics", "Science Education", "Tapes, Adhesives & Sealants", "Test, Measure & Inspect",
), key=len, reverse=True))

STYLES = ("amber", "cobalt", "crimson", "olive", "violet", "silver", "teal", "ochre")
SYNTH_DOMAINS = ("books", "music", "games", "films")


def amazon_second_level(category: str) -> str | None:
    """The second-level category of an Amazon-Scientific category path (None if not found)."""
    rest = category.strip()
    if not rest.startswith(AMAZON_ROOT):
        return None
    rest = rest[len(AMAZON_ROOT):].strip()
    return next((name for name in AMAZON_SECOND_LEVEL if rest.startswith(name)), None)


def item_labels(dataset: str, texts: Sequence[ItemText]) -> list[list[str]]:
    """Candidate domain labels of each item, in priority order.

    Amazon-Scientific: the second-level category (one label or none); MovieLens, synthetic and
    other datasets: the item's genres in their listed order.
    """
    if dataset == "amazon-scientific":
        out = []
        for t in texts:
            label = amazon_second_level(t.genres[0]) if t.genres else None
            out.append([label] if label else [])
        return out
    return [list(t.genres) for t in texts]


def assign_domains(labels: Sequence[Sequence[str]], n_domains: int,
                   item_counts: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """Keep the ``n_domains`` largest labels as domains; each item gets its first kept label.

    Parameters
    ----------
    labels : sequence of sequence of str
        Labels of each item in priority order (:func:`item_labels`).
    n_domains : int
        How many domains to keep (largest by interactions if ``item_counts`` is given, else by
        items; ties by name).
    item_counts : np.ndarray, optional
        Interactions per item (weights of the size count).

    Returns
    -------
    domains : list of str
        Domain names, largest first.
    item_domain : np.ndarray
        int64 domain index of each item, -1 for items in none of them.

    """
    weights = np.ones(len(labels)) if item_counts is None else np.asarray(item_counts, float)
    size: Counter = Counter()
    for item, labs in enumerate(labels):
        for lab in labs:
            size[lab] += weights[item]
    domains = [name for name, _ in sorted(size.items(), key=lambda kv: (-kv[1], kv[0]))
               ][:n_domains]
    index = {name: d for d, name in enumerate(domains)}
    item_domain = np.full(len(labels), -1, dtype=np.int64)
    for item, labs in enumerate(labels):
        hit = next((index[lab] for lab in labs if lab in index), -1)
        item_domain[item] = hit
    return domains, item_domain


@dataclass
class SyntheticDomains:
    """A generated multi-domain dataset (see :func:`synthetic_multidomain`).

    Attributes
    ----------
    user, item : np.ndarray
        Interactions (int64), ``time`` their float64 timestamps (global clock).
    texts : list of ItemText
        Title ``"<style> <domain-noun> <id>"`` and the domain as genre.
    item_domain, item_style : np.ndarray
        Domain and style index of each item.
    user_style : np.ndarray
        ``(n_users, n_domains)`` each user's style in each domain (independent draws).
    domains : list of str
        Domain names.

    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    texts: list[ItemText]
    item_domain: np.ndarray
    item_style: np.ndarray
    user_style: np.ndarray
    domains: list[str]


def synthetic_multidomain(n_users: int = 120, n_domains: int = 3, n_styles: int = 4,
                          items_per_style: int = 12, per_user: int = 14, taste: float = 0.85,
                          trend: float = 0.0, n_trending: int = 2, late: float = 0.35,
                          seed: int = 0) -> SyntheticDomains:
    """Users with independent per-domain tastes; optionally following their group's trend.

    Each user ``u`` has a style ``s_ud`` in every domain ``d``, drawn uniformly and independently.
    An interaction picks a domain uniformly, then an unseen item of ``s_ud`` with probability
    ``taste`` (else any unseen item of ``d``). Times are uniform on [0, 1) (a global clock).
    With ``trend > 0``, an interaction after time ``1 - late`` picks, with probability
    ``trend``, one of the ``n_trending`` items of ``(d, s_ud)`` that are "in fashion" in that
    period: users of one (domain, style) group then share recent items.

    Returns
    -------
    SyntheticDomains
        Interactions, item text and the ground-truth tastes.

    """
    rng = stream(seed, Salt.AGENTCF_SYNTHETIC)
    domains = list(SYNTH_DOMAINS[:n_domains])
    n_items = n_domains * n_styles * items_per_style
    item_domain = np.repeat(np.arange(n_domains), n_styles * items_per_style)
    item_style = np.tile(np.repeat(np.arange(n_styles), items_per_style), n_domains)
    texts = [ItemText(f"{STYLES[item_style[i]]} {domains[item_domain[i]].rstrip('s')} {i}",
                      [domains[item_domain[i]]]) for i in range(n_items)]
    user_style = rng.integers(0, n_styles, size=(n_users, n_domains))
    trending = {(d, s): rng.choice(np.flatnonzero((item_domain == d) & (item_style == s)),
                                   n_trending, replace=False)
                for d in range(n_domains) for s in range(n_styles)}
    users, items, times = [], [], []
    for u in range(n_users):
        seen: set[int] = set()
        for t in np.sort(rng.random(per_user)):
            d = int(rng.integers(n_domains))
            s = int(user_style[u, d])
            pool = np.flatnonzero(item_domain == d)
            if trend > 0 and t >= 1 - late and rng.random() < trend:
                pool = trending[(d, s)]
            elif rng.random() < taste:
                pool = pool[item_style[pool] == s]
            pool = np.array([i for i in pool if i not in seen])
            if len(pool) == 0:
                pool = np.array([i for i in np.flatnonzero(item_domain == d) if i not in seen])
            item = int(rng.choice(pool))
            seen.add(item)
            users.append(u)
            items.append(item)
            times.append(float(t))
    return SyntheticDomains(np.asarray(users, np.int64), np.asarray(items, np.int64),
                            np.asarray(times), texts, item_domain, item_style, user_style,
                            domains)
