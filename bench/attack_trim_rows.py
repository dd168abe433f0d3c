"""Row helpers of the trimmed-mean probe (``bench/attack_trim_probe.py``, issue 18).

The per-user rows of a round's replies, the attackers' rows among them, the share of the
attackers' values a trimmed mean keeps, and FedRecAttack's step against the lead its targets
already have (``attack_trim_probe.py --saturation``). Pure functions on arrays: no run, no data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from florec.protocol.codec import from_record
from florec.strategies.robust_rules import stack_user_rows

K = 10


def user_rows(replies: Iterable[Message]) -> dict[str, np.ndarray]:
    """The concatenated per-user rows of ``replies`` (users numbered across replies).

    :func:`florec.strategies.robust_rules.stack_user_rows`, as ``RobustFedAvgRec`` stacks them.

    Parameters
    ----------
    replies : iterable of Message
        Per-user uploads (:mod:`florec.protocol.user_rows`); replies with an error are skipped.

    Returns
    -------
    dict
        ``users`` (row's user, offset by the users of the replies before it), ``items``,
        ``item_emb`` (rows, d) and ``item_bias``; empty arrays without a reply.

    """
    uploads = [from_record(msg.content.array_records["arrays"]) for msg in replies
               if not msg.has_error()]
    keys = ("users", "items", "item_emb", "item_bias")
    if not uploads:
        return {k: np.zeros(0) for k in keys}
    rows = stack_user_rows(uploads)  # the strategy's own concatenation
    return {k: rows[k] for k in keys}


def attacker_rows(rows: dict[str, np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Mask of the rows of users whose every row is a target item.

    Those are the promotion attackers (FedRecAttack, A-ra/A-hum upload target rows only); a
    benign user also uploads its own positives and sampled negatives.

    Parameters
    ----------
    rows : dict
        :func:`user_rows` of a round.
    targets : np.ndarray
        The target items.

    Returns
    -------
    np.ndarray
        Boolean mask over the rows.

    """
    users, items = rows["users"].astype(np.int64), rows["items"].astype(np.int64)
    if len(users) == 0:
        return np.zeros(0, bool)
    off_target = np.bincount(users, weights=~np.isin(items, targets), minlength=users.max() + 1)
    return off_target[users] == 0


def kept_share(values: np.ndarray, bad: np.ndarray, k: int) -> float | None:
    """Share of the attackers' coordinates a trimmed mean keeps (None without attackers).

    Per coordinate the ``k`` lowest and ``k`` highest of the row's ``c`` values are cut; the
    attackers' values among them are counted (tied values are interchangeable):
    ``1 - #(attacker values cut) / (#attackers x #coordinates)``.

    Parameters
    ----------
    values : np.ndarray
        (c, coordinates): the ``c`` users' changes of one item row.
    bad : np.ndarray
        (c,) mask of the attackers among them.
    k : int
        Values cut from each end per coordinate (``floor(beta c)``).

    Returns
    -------
    float or None
        The kept share in [0, 1]; None when ``bad`` is all False.

    """
    if not bad.any():
        return None
    if k == 0:
        return 1.0
    order = np.argsort(values, axis=0, kind="stable")
    cut = np.concatenate([order[:k], order[len(values) - k:]])
    return 1.0 - float(bad[cut].sum()) / (bad.sum() * values.shape[1])


def saturation(margins: Iterable[float] = (0, 10, 20, 25, 28, 30, 32, 35, 40),
               seed: int = 0) -> list[dict[str, float]]:
    """Norm of FedRecAttack's target-row step when the targets already lead by ``margin``.

    :func:`florec.client.attack_rules.promotion_step` (``attack-lr`` 1, ``attack-steps`` 5,
    K = 10) on a seeded random table (300 items, d = 64, item rows N(0, 0.1), 50 users N(0, 1))
    whose 2 targets carry bias ``margin`` above every other item: each step is the gradient
    divided by ``max(||g||, 1e-12)``; the softplus gradient scales with ``sigmoid(-margin)``, so
    once it falls below 1e-12 the step shrinks towards 0 (the attack stops pushing targets it
    already ranks far above the top-K).

    Parameters
    ----------
    margins : iterable of float
        The targets' leads (bias above every other item).
    seed : int
        Seed of the random table.

    Returns
    -------
    list of dict
        Per margin: ``margin`` and ``step_norm`` (the targets' mean ``||[dV_t, db_t]||``).

    """
    from florec.client.attack_rules import promotion_step

    rng = np.random.default_rng(seed)
    emb, users, targets = rng.normal(0, 0.1, (300, 64)), rng.normal(0, 1, (50, 64)), \
        np.array([5, 9])
    out = []
    for margin in margins:
        bias = np.zeros(300)
        bias[targets] = margin
        d, db = promotion_step(emb, bias, users, targets, K, 1.0, 5)
        out.append({"margin": float(margin),
                    "step_norm": float(np.sqrt((d ** 2).sum(1) + db ** 2).mean())})
    return out
