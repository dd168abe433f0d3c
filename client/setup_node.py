"""A node's part in ``train.setup`` messages: setup stages before round 1, secure-sum exchanges.

- ``setup = "secure-sum"``, ``stage = "keys"``: Fair Sampling's item popularity. The node joins a
  secure aggregation (:mod:`florec.client.secagg_node`) with its vector (its users' item counts,
  then its number of users) and replies with its public keys; the raw counts never leave it.
- ``setup = "secagg"``: the ``share`` / ``mask`` / ``unmask`` exchanges of the current secure
  aggregation (Fair Sampling's sum, the attack knowledge's, or a FedAvg round's under
  ``secagg=true``).
- the attacks' public knowledge (:func:`florec.client.attacks.knowledge_setup`, issue 18): its
  ``report`` stage joins a secure aggregation of the node's counts, whose exchanges come as
  ``setup = "secagg"`` like Fair Sampling's.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, RecordDict

from florec.client import secagg_node
from florec.client.attacks import knowledge_setup
from florec.client.trainers.bucket import Bucket
from florec.protocol.codec import to_record
from florec.protocol.public_knowledge import SETUP as KNOWLEDGE_SETUP
from florec.protocol.secagg import dp_noise_shares
from florec.protocol.secagg_wire import SETUP_NAME, pack
from florec.recdata.runconfig import RunConfig


def local_counts(bucket: Bucket) -> np.ndarray:
    """The node's secure-sum input: per-item train counts of its users, then its user count."""
    pop = np.asarray(bucket.train.astype(bool).sum(axis=0)).ravel().astype(np.int64)
    return np.concatenate([pop, [len(bucket.users)]])


def setup(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Answer one setup message (see the module docstring).

    Raises
    ------
    RuntimeError
        For an unknown setup or stage, or an exchange this node refuses
        (:func:`florec.client.secagg_node.handle`).

    """
    config = msg.content.config_records["config"]
    if config.get("setup") == KNOWLEDGE_SETUP:  # the attacks' public knowledge (issue 18)
        return knowledge_setup(msg, context, cfg, bucket)
    min_nodes = 1 if cfg.num_nodes == 1 else 2  # a sum over one node is that node's input
    if config.get("setup") == SETUP_NAME:
        return secagg_node.handle(msg, context, min_nodes, dp_noise_shares(
            cfg.num_nodes, cfg.dp and cfg.dp_mode == "distributed"))
    if config.get("setup") != "secure-sum" or config.get("stage") != "keys":
        raise RuntimeError(f"unknown setup {config.get('setup')!r} / {config.get('stage')!r}")
    codes = pack(np.zeros(0), local_counts(bucket), 1.0, int(config["secagg-nodes"]))
    keys = secagg_node.advertise(context, int(msg.metadata.dst_node_id), codes,
                                 str(config["info"]))
    return RecordDict({"arrays": to_record(keys)})
