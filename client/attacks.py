"""Malicious users' uploads: the attack replaces their rows in a node's result.

Malicious users are ordinary logical clients of the buckets, drawn by seed and knowing what
:mod:`florec.client.attack_knowledge` says. On a FedAvg-MF node their local trainer is replaced
by the attack of ``attack`` (:mod:`florec.client.attack_rules`): :func:`apply_attack` drops their
benign rows from the node's :class:`LocalResult` and appends the attack's rows, so the node's
upload (pre-summed or per-user, see :mod:`florec.protocol.user_rows`) carries them like any
user's rows; the node hosting them logs them (:func:`log_hosted`). Malicious users are left out
of every evaluation (:func:`benign_rows`: accuracy and exposure are measured on benign users).

Under FedCIA the logical clients are groups of users with one private model: a malicious client
uploads the similarity of a poisoned item table (:func:`poison_similarity`).

The knowledge names are re-exported here, so ``florec.client.attacks`` stays the one import
for nodes and the bench.
"""

from __future__ import annotations

import functools
from logging import INFO

import numpy as np
from flwr.common.logger import log

from florec.client.attack_knowledge import (
    AttackKnowledge,
    knowledge_from_public,
    knowledge_from_split,
    knowledge_setup,
    malicious_users,
    needs_knowledge,
    node_knowledge,
    store_published,
)
from florec.client.attack_rules import attack_rows
from florec.client.trainers.bpr_embedding import LocalConfig, LocalResult
from florec.client.trainers.bucket import Bucket
from florec.recdata.runconfig import RunConfig

__all__ = ["AttackKnowledge", "apply_attack", "benign_rows", "knowledge_from_public",
           "knowledge_from_split", "knowledge_setup", "log_hosted", "malicious_users",
           "needs_knowledge", "node_knowledge", "poison_similarity", "store_published"]


def poison_similarity(cfg: RunConfig, know: AttackKnowledge | None, client: int,
                      emb: np.ndarray) -> np.ndarray:
    r"""FedCIA: the item table whose similarity ``E E^T`` a malicious client uploads.

    PipAttack-style popularity mimicking (Zhang et al., WSDM 2022) moved to the similarity
    upload: the client sets every target row to ``attack-lr`` times the mean row of the 5% most
    popular items, so in ``S_k = E E^T`` the targets look like popular items
    (``S_k[t, j] = attack-lr * c_pop . e_j``) and every client that aligns to the aggregate pulls
    its targets towards the popular items. Benign clients' ``emb`` is returned unchanged.
    """
    if know is None or cfg.attack == "none" or client not in set(know.malicious_clients.tolist()):
        return emb
    top = np.argsort(-know.popularity, kind="stable")[:max(1, len(emb) // 20)]
    out = emb.copy()
    out[know.targets] = cfg.attack_lr * emb[top].mean(axis=0)
    return out


def benign_rows(bucket: Bucket, know: AttackKnowledge | None) -> np.ndarray:
    """Local rows of the bucket's benign users (all rows without an attack)."""
    rows = np.arange(len(bucket.users))
    if know is None or len(know.malicious) == 0:
        return rows
    return rows[~np.isin(bucket.users, know.malicious)]


@functools.lru_cache(maxsize=1024)
def log_hosted(pid: int, users: tuple[int, ...]) -> None:
    """Log once per run and node which malicious users partition ``pid`` hosts."""
    log(INFO, "partition %d hosts malicious users %s", pid, list(users))


def apply_attack(cfg: RunConfig, know: AttackKnowledge | None, bucket: Bucket,
                 res: LocalResult, glob: dict[str, np.ndarray], server_round: int,
                 pid: int = -1) -> LocalResult:
    """Replace the malicious users' rows of ``res`` by their attack's rows.

    Parameters
    ----------
    cfg : RunConfig
        ``attack`` and its knobs.
    know : AttackKnowledge or None
        The run's attack knowledge (None: no attack, ``res`` is returned unchanged).
    bucket : Bucket
        The users ``res`` was trained for (a round's cohort of the node's bucket).
    res : LocalResult
        The benign trainer's result for every user of ``bucket``.
    glob : dict of str to np.ndarray
        The global item table ``item_emb`` / ``item_bias`` of this round.
    server_round : int
        Keys the attackers' random streams.
    pid : int
        Partition id (for the log line).

    Returns
    -------
    LocalResult
        ``res`` with the malicious users' rows replaced (same object when no user is malicious).

    """
    if know is None or len(know.malicious) == 0:
        return res
    bad = np.flatnonzero(np.isin(bucket.users, know.malicious))
    if len(bad) == 0:
        return res
    log_hosted(pid, tuple(int(u) for u in bucket.users[bad]))
    local = LocalConfig.from_run_config(cfg, server_round)
    rows = attack_rows(cfg, know, bucket.users[bad], res.user_emb[bad], glob["item_emb"],
                       glob["item_bias"], server_round, local)
    keep = ~np.isin(res.row_user, bad)
    return LocalResult(
        user_emb=res.user_emb,
        row_user=np.concatenate([res.row_user[keep], bad[rows.row_user]]),
        row_item=np.concatenate([res.row_item[keep], rows.row_item]),
        delta=np.concatenate([res.delta[keep], rows.delta.astype(res.delta.dtype)]),
        bias_delta=np.concatenate([res.bias_delta[keep],
                                   rows.bias_delta.astype(res.bias_delta.dtype)]),
        loss_sum=res.loss_sum, num_pairs=res.num_pairs, triples=res.triples,
        user_opt_state=res.user_opt_state)
