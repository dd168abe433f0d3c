"""AgentCF's evaluation protocol: sampled cross-domain users, a 90/10 time split, 1 + 9 candidates.

:func:`build_protocol` turns interactions with item domains into a :class:`DomainData`:

1. keep interactions with items in a kept domain; keep users active in at least
   ``min_domains`` domains with ``min_inter..max_inter`` such interactions;
2. sample ``n_users`` of them (seeded);
3. split by time: ``global`` sorts all kept interactions of the sampled users on one clock and
   puts the last ``test_frac`` in test (the authors' split); ``user`` puts the last
   ``ceil(test_frac * n_u)`` of each user's interactions in test (datasets without timestamps);
4. each test interaction gets ``n_neg`` negatives from its domain's items that the user never
   interacted with (seeded), so every method ranks the identical 1 + ``n_neg`` candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.seeds import Salt, stream


@dataclass
class DomainData:
    """One run's sampled users, split and candidates.

    Attributes
    ----------
    domains : list of str
        Domain names (index = domain id).
    item_domain : np.ndarray
        Domain of each item (-1: none).
    item_text : list of str
        Public text of each item (title and categories): the item agents' initial memory.
    item_title : list of str
        Titles (what a ranker must name in ``titles`` mode).
    users : np.ndarray
        Sampled user ids (sorted).
    train : dict
        ``user -> [(item, time), ...]`` training interactions in time order.
    test : list of tuple
        ``(user, item)`` test interactions in time order.
    candidates : np.ndarray
        ``(len(test), 1 + n_neg)`` item ids; column 0 is the true item.

    """

    domains: list[str]
    item_domain: np.ndarray
    item_text: list[str]
    item_title: list[str]
    users: np.ndarray
    train: dict[int, list[tuple[int, float]]]
    test: list[tuple[int, int]]
    candidates: np.ndarray
    meta: dict = field(default_factory=dict)

    def domain_items(self, d: int) -> np.ndarray:
        """Items of domain ``d``."""
        return np.flatnonzero(self.item_domain == d)

    def seen(self, user: int) -> set[int]:
        """Every item the user interacted with (train and test)."""
        return {i for i, _ in self.train.get(user, [])} | {i for u, i in self.test if u == user}


def build_protocol(user: np.ndarray, item: np.ndarray, time: np.ndarray, *,
                   item_domain: np.ndarray, domains: Sequence[str], item_text: Sequence[str],
                   item_title: Sequence[str], n_users: int = 100, min_domains: int = 2,
                   min_inter: int = 5, max_inter: int = 100, test_frac: float = 0.1,
                   n_neg: int = 9, split: str = "global", seed: int = 0) -> DomainData:
    """Sample users and build the split and the candidates (see the module docstring).

    Raises
    ------
    ConfigError
        No user qualifies, a domain has too few items for ``n_neg`` negatives, or an unknown
        ``split``.

    """
    if split not in ("global", "user"):
        raise ConfigError(f"split {split!r} is unknown; use 'global' or 'user'")
    item_domain = np.asarray(item_domain)
    keep = item_domain[item] >= 0
    user, item, time = user[keep], item[keep], np.asarray(time, np.float64)[keep]
    order = np.lexsort((np.arange(len(user)), time, user))
    user, item, time = user[order], item[order], time[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    eligible = [int(user[s]) for s, e in zip(starts, ends, strict=True)
                if min_inter <= e - s <= max_inter
                and len(set(item_domain[item[s:e]].tolist())) >= min_domains]
    if not eligible:
        raise ConfigError(f"no user has {min_inter}..{max_inter} interactions in >= "
                          f"{min_domains} domains; lower agentcf-min-domains or add domains")
    rng = stream(seed, Salt.AGENTCF_USERS)
    chosen = np.sort(rng.choice(eligible, min(n_users, len(eligible)), replace=False))
    mask = np.isin(user, chosen)
    user, item, time = user[mask], item[mask], time[mask]
    is_test = np.zeros(len(user), bool)
    if split == "global":
        glob = np.lexsort((item, user, time))
        n_train = int(math.floor((1 - test_frac) * len(user)))
        is_test[glob[n_train:]] = True
    else:
        for u in chosen:
            rows = np.flatnonzero(user == u)
            is_test[rows[len(rows) - math.ceil(test_frac * len(rows)):]] = True
    train: dict[int, list[tuple[int, float]]] = {int(u): [] for u in chosen}
    for u, i, t in zip(user[~is_test], item[~is_test], time[~is_test], strict=True):
        train[int(u)].append((int(i), float(t)))
    test_rows = np.flatnonzero(is_test)
    test_rows = test_rows[np.lexsort((user[test_rows], time[test_rows]))]
    test = [(int(user[r]), int(item[r])) for r in test_rows]
    seen = {int(u): set(item[user == u].tolist()) for u in chosen}
    neg_rng = stream(seed, Salt.AGENTCF_NEGATIVES)
    cands = np.zeros((len(test), 1 + n_neg), dtype=np.int64)
    for row, (u, i) in enumerate(test):
        pool = np.flatnonzero(item_domain == item_domain[i])
        pool = pool[~np.isin(pool, list(seen[u]))]
        if len(pool) < n_neg:
            raise ConfigError(f"domain {domains[item_domain[i]]!r} has {len(pool)} items the "
                              f"user has not seen, fewer than {n_neg}; lower agentcf-negatives")
        cands[row, 0] = i
        cands[row, 1:] = neg_rng.choice(pool, n_neg, replace=False)
    return DomainData(list(domains), item_domain, list(item_text), list(item_title), chosen,
                      train, test, cands,
                      meta={"eligible_users": len(eligible), "split": split,
                            "train_interactions": int((~is_test).sum()),
                            "test_interactions": len(test)})
