"""What the attackers and the exposure metric know, gathered from the nodes' shards (issue 18).

A promotion attack assumes some knowledge is public: the item popularity (bandwagon,
PipAttack and the ``unpopular:N`` targets rank items by it) and, for FedRecAttack, a small share
of the users' interactions (public ratings or reviews). In a federation that knowledge sits in
the nodes' shards, so the strategy gathers it in setup stages before round 1 (``train.setup``
messages; :class:`florec.strategies.public_knowledge.PublicKnowledge`):

- ``setup=attack-knowledge``, ``stage=report``: each node computes :func:`node_report` from its
  own shard, joins a secure aggregation (:mod:`florec.client.secagg_node`) of
  :func:`secure_input` (its users' per-item training counts, then its user count) and replies
  with its public keys and, in the clear, only its public pairs (public by the attack model);
- ``setup=secagg``: the ``share`` / ``mask`` / ``unmask`` exchanges, after which the server
  knows the summed counts and user total and no node's own vector;
- ``setup=attack-knowledge``, ``stage=publish``: the server sends :func:`publication` (the sums,
  the public pairs concatenated in (user, item) order) to every node, which keeps it for the run.

:func:`combine_reports` is the same publication from plain reports (the reference the secure
sum must equal). A node never reads another node's rows. The public share of a user ``u`` is
drawn from ``u``'s own stream, so the union over any partition of the users is the same set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

from florec.recdata.seeds import Salt, stream

__all__ = ["PUBLIC_KEYS", "SETUP", "combine_reports", "needs_knowledge", "node_report",
           "public_pairs", "publication", "secure_input"]

#: the ``setup`` value of the two stages' messages
SETUP = "attack-knowledge"
#: key of the published knowledge in a node's ``Context.state``
STATE_KEY = "attack-knowledge"
#: the keys of a report that travel in the clear (the public pairs)
PUBLIC_KEYS = ("public_user", "public_item")


def needs_knowledge(cfg: Any) -> bool:
    """Whether a run (a ``RunConfig``) needs this knowledge: an attack, or targets to measure."""
    return (cfg.attack != "none" and cfg.attack_fraction > 0) or bool(cfg.attack_targets)


def public_pairs(seed: int, share: float, users: np.ndarray, train: sp.csr_matrix
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The public share of the users' training interactions.

    Each training interaction ``(u, i)`` is public with probability ``share``, drawn from
    ``u``'s stream ``(seed, ATTACK_TARGETS, 1, u)`` over ``u``'s items in id order.

    Parameters
    ----------
    seed : int
        The run's seed.
    share : float
        ``attack-public``.
    users : np.ndarray
        Global ids of the rows of ``train``.
    train : scipy.sparse.csr_matrix
        Their training interactions (one row per user, global item ids).

    Returns
    -------
    (np.ndarray, np.ndarray)
        Global user and item ids of the public interactions, sorted by (user, item).

    """
    out_u, out_i = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for row, user in enumerate(np.asarray(users, dtype=np.int64).tolist()):
        items = np.sort(train.indices[train.indptr[row]:train.indptr[row + 1]]).astype(np.int64)
        if len(items) == 0 or share <= 0:
            continue
        keep = stream(seed, Salt.ATTACK_TARGETS, 1, user).random(len(items)) < share
        out_u.append(np.full(int(keep.sum()), user, np.int64))
        out_i.append(items[keep])
    u, i = np.concatenate(out_u), np.concatenate(out_i)
    order = np.lexsort((i, u))
    return u[order], i[order]


def node_report(seed: int, share: float, users: np.ndarray, train: sp.csr_matrix
                ) -> dict[str, np.ndarray]:
    """A node's facts for ``stage=report``, from its own shard only.

    Keys: ``popularity`` (its users' per-item training counts) and ``num_users``, which leave
    the node only inside a secure sum (:func:`secure_input`), and the public pairs
    ``public_user`` / ``public_item`` (:func:`public_pairs`), which travel in the clear.
    """
    pu, pi = public_pairs(seed, share, users, train)
    return {"popularity": np.asarray(train.sum(axis=0)).ravel().astype(np.int64),
            "num_users": np.array([len(users)], np.int64), "public_user": pu, "public_item": pi}


def secure_input(report: dict[str, np.ndarray]) -> np.ndarray:
    """A node's secure-sum integers: ``popularity`` (n entries), then ``num_users``."""
    return np.concatenate([report["popularity"].astype(np.int64),
                           report["num_users"].astype(np.int64).ravel()[:1]])


def _pairs(reports: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    u = np.concatenate([np.zeros(0, np.int64)]
                       + [r["public_user"].astype(np.int64) for r in reports])
    i = np.concatenate([np.zeros(0, np.int64)]
                       + [r["public_item"].astype(np.int64) for r in reports])
    order = np.lexsort((i, u))
    return {"public_user": u[order], "public_item": i[order]}


def publication(total: np.ndarray, pairs: Iterable[dict[str, np.ndarray]]
                ) -> dict[str, np.ndarray]:
    r"""The published knowledge from a secure sum of :func:`secure_input` and the public pairs.

    Parameters
    ----------
    total : np.ndarray
        :math:`\sum_k` ``secure_input(report_k)`` over every node (n counts, then the users).
    pairs : iterable of dict
        Each node's ``public_user`` / ``public_item`` (concatenated and sorted by (user, item),
        so the order of the replies does not matter).

    """
    total = np.asarray(total, np.int64)
    return {"popularity": total[:-1], "num_users": total[-1:]} | _pairs(list(pairs))


def combine_reports(reports: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The published knowledge from plain reports (the reference of the secure sum).

    ``popularity`` and ``num_users`` are summed; the public pairs are concatenated and sorted by
    (user, item), so the order of the replies does not matter.

    Raises
    ------
    ValueError
        No report, or reports with catalogues of different sizes.

    """
    reports = list(reports)
    if not reports:
        raise ValueError("no node reported its public knowledge")
    if len({len(r["popularity"]) for r in reports}) != 1:
        raise ValueError("nodes reported popularity vectors of different lengths; give every "
                         "node a shard of the same split")
    return publication(np.sum([secure_input(r) for r in reports], axis=0), reports)
