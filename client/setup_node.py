"""A node's part in a strategy's setup stages (``train.setup`` messages) before round 1.

The one setup so far is the secure sum of item popularity (:mod:`florec.protocol.secure_sum`):

- ``stage=keys``: draw an X25519 key pair, keep the private key in the node state, reply with
  the public key;
- ``stage=mask``: reply with this node's vector (its users' item counts, then its number of
  users) masked with every peer's pairwise mask. The raw counts never leave the node.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from florec.client.attacks import knowledge_setup
from florec.client.trainers.bucket import Bucket
from florec.protocol.codec import from_record, to_record
from florec.protocol.public_knowledge import SETUP as KNOWLEDGE_SETUP
from florec.protocol.secure_sum import attempt_info, masked_upload, new_keypair
from florec.recdata.runconfig import RunConfig

SECRET_KEY = "secure-sum-secret"


def local_counts(bucket: Bucket) -> np.ndarray:
    """The node's secure-sum input: per-item train counts of its users, then its user count."""
    pop = np.asarray(bucket.train.astype(bool).sum(axis=0)).ravel().astype(np.int64)
    return np.concatenate([pop, [len(bucket.users)]])


def _keys(context: Context) -> RecordDict:
    sk, pk = new_keypair()
    context.state[SECRET_KEY] = ConfigRecord({"sk": sk, "pk": pk})
    return RecordDict({"arrays": to_record({"public_key": np.frombuffer(pk, dtype=np.uint8)})})


def _mask(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket) -> RecordDict:
    if SECRET_KEY not in context.state.config_records:
        raise RuntimeError("secure sum: mask stage before the keys stage on this node")
    own = context.state.config_records[SECRET_KEY]
    own_id = int(msg.metadata.dst_node_id)
    peers_in = from_record(msg.content.array_records["arrays"])
    ids = [int(i) for i in peers_in["peer_ids"].astype(np.uint64)]
    keys = [k.astype(np.uint8).tobytes() for k in peers_in["peer_keys"]]
    peers = dict(zip(ids, keys, strict=True))
    if peers.get(own_id) != own["pk"]:
        raise RuntimeError("secure sum: this node's public key is missing or altered in the "
                           "participant list")
    if len(peers) < min(2, cfg.num_nodes):
        raise RuntimeError(f"secure sum: {len(peers)} participant(s) would expose this node's "
                           "counts; refusing")
    attempt = int(msg.content.config_records["config"]["attempt"])
    values = local_counts(bucket)
    masked = masked_upload(values, own_id, bytes(own["sk"]), peers,
                           attempt_info(attempt, len(values)))
    return RecordDict({"arrays": to_record({"masked": masked})})


def setup(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Answer one setup stage of the strategy (see the module docstring).

    Raises
    ------
    RuntimeError
        For an unknown setup, a mask stage without keys, or a participant list that would
        expose this node (it lacks the node's key, or has fewer than 2 members).

    """
    config = msg.content.config_records["config"]
    if config.get("setup") == KNOWLEDGE_SETUP:  # the attacks' public knowledge (issue 18)
        return knowledge_setup(msg, context, cfg, bucket)
    if config.get("setup") != "secure-sum":
        raise RuntimeError(f"unknown setup {config.get('setup')!r}")
    if config["stage"] == "keys":
        return _keys(context)
    if config["stage"] == "mask":
        return _mask(msg, context, cfg, bucket)
    raise RuntimeError(f"unknown secure-sum stage {config['stage']!r}")
