"""What the malicious users of a run are and know (issue 18).

Malicious users are ``round(attack-fraction * n_users)`` user ids drawn by seed
(:func:`malicious_users`, stream ``Salt.ATTACK_USERS``), the same on every node and in the
bench; under FedCIA the malicious logical clients (user groups) are drawn the same way.

What an attacker knows (:class:`AttackKnowledge`): its own users (its shard), the round's
global item table, and what the attack model declares public: the item popularity (training
counts; the ``unpopular:N`` targets, bandwagon and PipAttack use it) and, for FedRecAttack, a
seeded ``attack-public`` share of the users' training interactions. No node reads the split:
the strategy gathers that public knowledge from the nodes' shards in its setup stages
(:mod:`florec.protocol.public_knowledge`, :func:`knowledge_setup`) and every node keeps the
published copy in its ``Context.state`` (:func:`store_published`, :func:`node_knowledge`). The
exposure metric needs only the targets (from the popularity) and the node's own users' rows.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from flwr.app import Context, Message, RecordDict

from florec.client import secagg_node
from florec.client.trainers.bucket import Bucket
from florec.models.exposure import parse_targets
from florec.protocol.codec import from_record, to_record
from florec.protocol.public_knowledge import (
    PUBLIC_KEYS,
    SETUP,
    STATE_KEY,
    needs_knowledge,
    node_report,
    public_pairs,
    secure_input,
)
from florec.protocol.secagg_wire import pack
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream
from florec.recdata.splits import Split

__all__ = ["AttackKnowledge", "knowledge_from_public", "knowledge_from_split", "knowledge_setup",
           "malicious_users", "needs_knowledge", "node_knowledge", "store_published"]


def malicious_users(cfg: RunConfig, n_users: int) -> np.ndarray:
    """Sorted ids of the malicious users: ``round(attack-fraction * n_users)`` drawn by seed.

    The draw is a prefix of one seeded permutation, so a larger fraction keeps the smaller
    fraction's users. Empty when ``attack`` is ``none`` or the fraction is 0.
    """
    count = int(round(cfg.attack_fraction * n_users)) if cfg.attack != "none" else 0
    if count == 0:
        return np.zeros(0, np.int64)
    order = stream(cfg.seed, Salt.ATTACK_USERS).permutation(n_users)
    return np.sort(order[:count]).astype(np.int64)


@dataclass(frozen=True)
class AttackKnowledge:
    """What the attackers (and the exposure metric) know of the federation.

    Attributes
    ----------
    malicious : np.ndarray
        Sorted global ids of the malicious users.
    targets : np.ndarray
        Target items (empty without ``attack-targets``).
    popularity : np.ndarray
        Training interactions per item (public).
    public : scipy.sparse.csr_matrix
        The public share of the training interactions (users x items).
    malicious_clients : np.ndarray
        FedCIA: indices of the malicious clients (``malicious`` holds their users).

    """

    malicious: np.ndarray
    targets: np.ndarray
    popularity: np.ndarray
    public: sp.csr_matrix
    malicious_clients: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def knowledge_from_public(cfg: RunConfig, n_users: int, popularity: np.ndarray,
                          public_user: np.ndarray, public_item: np.ndarray) -> AttackKnowledge:
    """Attack knowledge of a run from its public facts (every node computes the same).

    Parameters
    ----------
    cfg : RunConfig
        ``attack``, ``attack-fraction``, ``attack-targets`` and the partition (FedCIA).
    n_users : int
        Users of the whole split (malicious ids are drawn among them).
    popularity : np.ndarray
        Training interactions per item.
    public_user, public_item : np.ndarray
        The public interactions (:func:`florec.protocol.public_knowledge.public_pairs`).

    Raises
    ------
    ConfigError
        A promotion attack without ``attack-targets``.

    """
    popularity = np.asarray(popularity, dtype=np.int64)
    targets = parse_targets(cfg.attack_targets, popularity, cfg.seed, Salt.ATTACK_TARGETS) \
        if cfg.attack_targets else np.zeros(0, np.int64)
    if cfg.attack in ("random", "bandwagon", "pipattack", "fedrecattack", "a-ra", "a-hum") \
            and cfg.attack_fraction > 0 and len(targets) == 0:
        raise ConfigError(f"attack '{cfg.attack}' promotes target items; set attack-targets, "
                          "e.g. -c \"attack-targets='unpopular:5'\"")
    public = sp.csr_matrix((np.ones(len(public_user), np.float32),
                            (np.asarray(public_user, np.int64), np.asarray(public_item, np.int64))),
                           shape=(n_users, len(popularity)))
    if cfg.algorithm != "fedcia":
        return AttackKnowledge(malicious_users(cfg, n_users), targets, popularity, public)
    from florec.recdata.partition import node_clients_of

    clients = [c for node in node_clients_of(cfg, n_users) for c in node]
    bad = malicious_users(cfg, len(clients))  # FedCIA: the logical clients are user groups
    users = np.sort(np.concatenate([clients[i] for i in bad] + [np.zeros(0, np.int64)]))
    return AttackKnowledge(users.astype(np.int64), targets, popularity, public, bad)


def knowledge_from_split(cfg: RunConfig, split: Split) -> AttackKnowledge:
    """The :class:`AttackKnowledge` the nodes' setup publishes, computed from a whole split.

    For the bench's logs and tests: equal to what :func:`node_knowledge` returns on every node
    of a federated run over ``split`` (whatever the partition).
    """
    train = split.matrix("train")
    pu, pi = public_pairs(cfg.seed, cfg.attack_public, np.arange(split.n_users), train)
    return knowledge_from_public(cfg, split.n_users, np.asarray(train.sum(axis=0)).ravel(),
                                 pu, pi)


@functools.lru_cache(maxsize=4)
def _cached_knowledge(config_json: str, n_users: int, popularity: bytes, public_user: bytes,
                      public_item: bytes) -> AttackKnowledge:
    cfg = RunConfig.model_validate(json.loads(config_json))
    return knowledge_from_public(cfg, n_users, np.frombuffer(popularity, np.int64),
                                 np.frombuffer(public_user, np.int64),
                                 np.frombuffer(public_item, np.int64))


def knowledge_setup(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket
                    ) -> RecordDict:
    """A node's answer to the ``attack-knowledge`` setup stages.

    ``stage=report``: the node's facts from its own shard
    (:func:`florec.protocol.public_knowledge.node_report`); its per-item counts and user count
    become its input to a secure sum (:func:`florec.client.secagg_node.advertise`, finished by
    the ``secagg`` exchanges) and the reply carries its public keys and, in the clear, only its
    public pairs. ``stage=publish``: keep the server's combined knowledge in the node's
    ``Context.state`` for the run (empty reply).

    Raises
    ------
    RuntimeError
        An unknown stage.

    """
    config = msg.content.config_records["config"]
    stage = config.get("stage")
    if stage == "report":
        report = node_report(cfg.seed, cfg.attack_public, bucket.users, bucket.train.tocsr())
        codes = pack(np.zeros(0), secure_input(report), 1.0, int(config["secagg-nodes"]))
        keys = secagg_node.advertise(context, int(msg.metadata.dst_node_id), codes,
                                     str(config["info"]))
        return RecordDict({"arrays": to_record(keys | {k: report[k] for k in PUBLIC_KEYS})})
    if stage == "publish":
        context.state[STATE_KEY] = msg.content.array_records["arrays"]
        return RecordDict()
    raise RuntimeError(f"unknown {SETUP} stage {stage!r}")


def store_published(context: Context, published: dict[str, np.ndarray]) -> None:
    """Keep published knowledge in a node's state (what ``stage=publish`` does; for tests)."""
    context.state[STATE_KEY] = to_record(published)


def node_knowledge(cfg: RunConfig, context: Context) -> AttackKnowledge | None:
    """The run's :class:`AttackKnowledge` from the knowledge published to this node.

    None without an attack or targets. Cached per process (many simulated nodes share one).

    Raises
    ------
    RuntimeError
        The run needs the knowledge but the strategy's setup never published it here.

    """
    if not needs_knowledge(cfg):
        return None
    record = context.state.array_records.get(STATE_KEY)
    if record is None:
        raise RuntimeError(f"this node has no published attack knowledge; the strategy must run "
                           f"its '{SETUP}' setup stages (strategies.robust.PublicKnowledge)")
    pub: dict[str, np.ndarray] = {k: np.ascontiguousarray(v, dtype=np.int64)
                                  for k, v in from_record(record).items()}
    return _cached_knowledge(json.dumps(cfg.to_flower(), sort_keys=True),
                             int(pub["num_users"][0]), pub["popularity"].tobytes(),
                             pub["public_user"].tobytes(), pub["public_item"].tobytes())
