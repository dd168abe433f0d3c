"""A seeded synthetic implicit-feedback dataset with learnable structure.

Items have power-law popularity and belong to one of ``n_clusters`` latent clusters; each user
belongs to a cluster too and prefers its items (their weight is multiplied by ``affinity``).
A user's items are drawn without replacement in proportion to these weights (Gumbel top-k);
the draw order is the time order, with increasing integer timestamps.
"""

from __future__ import annotations

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.interactions import Interactions

#: Parameter -> default. ``mean_interactions`` is the mean number of interactions per user.
SYNTHETIC_DEFAULTS: dict[str, float | int] = {
    "n_users": 200,
    "n_items": 300,
    "mean_interactions": 20,
    "n_clusters": 5,
    "seed": 0,
    "popularity_exponent": 1.0,
    "affinity": 10.0,
}
MIN_INTERACTIONS = 3
_INT_PARAMS = ("n_users", "n_items", "n_clusters", "seed")
_CELLS_PER_CHUNK = 1 << 22


def _check(params: dict) -> dict:
    unknown = sorted(set(params) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ConfigError(f"synthetic parameter {unknown[0]!r} is unknown; use: "
                          f"{', '.join(SYNTHETIC_DEFAULTS)}")
    p = {**SYNTHETIC_DEFAULTS, **params}
    for key, value in p.items():
        numeric = isinstance(value, (int, float, np.integer, np.floating))
        if isinstance(value, bool) or not numeric or not np.isfinite(value) \
                or (key in _INT_PARAMS and value != int(value)):
            kind = "an integer" if key in _INT_PARAMS else "a number"
            raise ConfigError(f"synthetic parameter {key}={value!r} is not {kind}; give {kind}")
    limits = {
        "n_users": (1, None), "n_items": (MIN_INTERACTIONS, None),
        "mean_interactions": (MIN_INTERACTIONS, p["n_items"]), "n_clusters": (1, p["n_items"]),
        "seed": (0, None), "popularity_exponent": (0, None), "affinity": (1, None),
    }
    for key, (low, high) in limits.items():
        if p[key] < low or (high is not None and p[key] > high):
            span = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"synthetic parameter {key}={p[key]!r} is out of range; "
                              f"choose a value {span}")
    return {k: int(v) if k in _INT_PARAMS else float(v) for k, v in p.items()}


def generate_synthetic(**params) -> Interactions:
    """Generate the synthetic dataset.

    Parameters
    ----------
    **params
        Any of the following (defaults in :data:`SYNTHETIC_DEFAULTS`):
    n_users : int, default 200
    n_items : int, default 300
        Catalogue size; at least 3.
    mean_interactions : float, default 20
        Mean interactions per user (at least 3, at most ``n_items``); every user gets at
        least 3, counts are ``3 + Poisson(mean_interactions - 3)`` capped at ``n_items``.
    n_clusters : int, default 5
        Latent clusters; items are spread evenly over them, users at random.
    seed : int, default 0
        Seed of the generator: equal parameters give equal data.
    popularity_exponent : float, default 1.0
        Item weights follow ``rank ** -popularity_exponent`` (0 = uniform).
    affinity : float, default 10.0
        Weight multiplier of items in the user's own cluster (1 = no cluster structure).

    Returns
    -------
    Interactions
        Named ``"synthetic"``, with timestamps and titles like ``"Item 17 (cluster 3)"``.

    Raises
    ------
    ConfigError
        A parameter is unknown, not a number or out of range.

    """
    p = _check(params)
    n_users, n_items, n_clusters = p["n_users"], p["n_items"], p["n_clusters"]
    rng = np.random.default_rng(p["seed"])
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
    user_cluster = rng.integers(n_clusters, size=n_users)
    log_weight = -p["popularity_exponent"] * np.log1p(rng.permutation(n_items))
    counts = MIN_INTERACTIONS + rng.poisson(p["mean_interactions"] - MIN_INTERACTIONS, n_users)
    counts = np.minimum(counts, n_items)
    log_affinity = np.log(p["affinity"])
    chunk = max(1, _CELLS_PER_CHUNK // n_items)
    items = []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        own = item_cluster[None, :] == user_cluster[start:stop, None]
        keys = log_weight[None, :] + log_affinity * own + rng.gumbel(size=own.shape)
        k_max = int(counts[start:stop].max())
        top = np.argsort(-keys, axis=1)[:, :k_max]
        items.append(top[np.arange(k_max)[None, :] < counts[start:stop, None]])
    item = np.concatenate(items).astype(np.int64)
    user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    gaps = 1.0 + np.floor(rng.exponential(86_400.0, size=len(user)))
    first = np.r_[0, np.cumsum(counts)[:-1]]
    since_start = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], counts)
    start_time = 1.6e9 + np.floor(rng.uniform(0.0, 3.0e7, size=n_users))
    time = np.repeat(start_time, counts) + since_start
    titles = {i: f"Item {i} (cluster {c})" for i, c in enumerate(item_cluster.tolist())}
    return Interactions.from_raw(user, item, time, name="synthetic",
                                 item_catalogue=np.arange(n_items), item_titles=titles)
