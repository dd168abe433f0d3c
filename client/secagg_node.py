"""A node's half of secure aggregation (:mod:`florec.protocol.secagg`) across Flower messages.

A node joins an aggregation with :func:`advertise` (its input vector is fixed then: FedAvg's
training reply, or Fair Sampling's item counts in a setup stage) and answers the server's three
exchanges with :func:`handle` (``train.setup`` messages, ``setup = "secagg"``):

- ``share``: the roster of public keys; the node checks that its own keys are in it unaltered
  and that it has at least ``min_nodes`` members, then returns its Shamir shares encrypted for
  each peer (threshold :func:`florec.protocol.secagg.default_threshold` of the roster);
- ``mask``: its inbox of peers' encrypted shares; returns its double-masked vector;
- ``unmask``: the alive and dropped lists; returns the shares they allow, never both secrets of
  one node (otherwise a reply flagged :data:`REFUSED`), then forgets its secrets.

Between messages the protocol state and the pending quantised input sit in the node's
``Context`` state as ConfigRecords (``secagg-state``, ``secagg-codes``), never in the node store
or as ArrayRecords, so checkpoints (node-store snapshots, which copy the store and the Context's
ArrayRecords) hold neither a key nor the input; a new aggregation (or a new training message)
replaces them.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from florec.protocol.codec import from_record, to_record
from florec.protocol.secagg import Refused, SecAggNode, default_threshold
from florec.protocol.secagg_wire import (
    REFUSED,
    SEALED_BYTES,
    SHARE_WIDTH,
    decode_roster,
    fedavg_range,
    fedavg_vector,
    node_from_json,
    node_to_json,
    pack,
)
from florec.recdata.runconfig import RunConfig

__all__ = ["CODES", "REFUSED", "STATE", "advertise", "fedavg_reply", "forget", "handle",
           "pending_codes"]

STATE = "secagg-state"
CODES = "secagg-codes"


def forget(context: Context) -> None:
    """Remove any secure-aggregation state (secrets and pending input) from the node."""
    for key in (STATE, CODES):
        if key in context.state:
            del context.state[key]


def pending_codes(context: Context) -> np.ndarray | None:
    """The pending input (a ConfigRecord: node-store snapshots copy only ArrayRecords)."""
    if CODES not in context.state.config_records:
        return None
    return np.frombuffer(bytes(context.state.config_records[CODES]["codes"]), "<u4").copy()


def _save(context: Context, node: SecAggNode) -> None:
    context.state[STATE] = ConfigRecord({"json": node_to_json(node)})


def advertise(context: Context, node_id: int, codes: np.ndarray, info: str
              ) -> dict[str, np.ndarray]:
    """Start an aggregation of ``codes`` named ``info``; returns the public keys to upload."""
    forget(context)
    node = SecAggNode(int(node_id), 0, info.encode())
    c_pk, s_pk = node.advertise()
    node.roster = {node.node_id: (c_pk, s_pk)}  # checked against the server's roster
    _save(context, node)
    context.state[CODES] = ConfigRecord({"codes": np.asarray(codes, "<u4").tobytes()})
    return {"secagg-c-pk": np.frombuffer(c_pk, np.uint8),
            "secagg-s-pk": np.frombuffer(s_pk, np.uint8)}


def _share(node: SecAggNode, arrays: dict[str, np.ndarray], min_nodes: int,
           floor: int = 0) -> dict:
    roster = decode_roster(arrays)
    if roster.get(node.node_id) != node.roster.get(node.node_id):
        raise RuntimeError("secure aggregation: this node's public keys are missing or altered "
                           "in the roster; refusing")
    if len(roster) < min_nodes:
        raise RuntimeError(f"secure aggregation: a roster of {len(roster)} node(s) would expose "
                           "this node's input; refusing")
    node.threshold = max(default_threshold(len(roster)), floor)
    out = node.share(roster)
    ids = sorted(out)
    return {"to": np.array(ids, np.uint64),
            "sealed": np.stack([np.frombuffer(out[v], np.uint8) for v in ids])
            if ids else np.zeros((0, SEALED_BYTES), np.uint8)}


def _mask(node: SecAggNode, context: Context, arrays: dict[str, np.ndarray]) -> dict:
    codes = pending_codes(context)
    if codes is None:
        raise RuntimeError("secure aggregation: mask stage without a pending input")
    inbox = {int(v): c.astype(np.uint8).tobytes()
             for v, c in zip(arrays["from"].astype(np.uint64), arrays["sealed"], strict=True)}
    masked = node.mask(codes, inbox)
    del context.state[CODES]
    return {"masked": masked}


def _unmask(node: SecAggNode, arrays: dict[str, np.ndarray]) -> dict:
    alive = [int(v) for v in arrays["alive"].astype(np.uint64)]
    dropped = [int(v) for v in arrays["dropped"].astype(np.uint64)]
    out = node.unmask(alive, dropped)
    node.forget()
    ids = sorted(out)
    return {"ids": np.array(ids, np.uint64),
            "kind": np.array([out[v][0] == "s" for v in ids], np.uint8),
            "shares": np.stack([np.frombuffer(out[v][1], np.uint8) for v in ids])
            if ids else np.zeros((0, SHARE_WIDTH), np.uint8)}


def handle(msg: Message, context: Context, min_nodes: int, floor: int = 0) -> RecordDict:
    """Answer one exchange (``share``, ``mask`` or ``unmask``) of the current aggregation.

    An unmask request this node refuses (:class:`florec.protocol.secagg.Refused`: it would
    reveal both secrets of a node, names unknown nodes, or too few alive ones) is answered
    with a ConfigRecord :data:`REFUSED` holding the reason, and the node leaves the
    aggregation (forgets its secrets).

    Raises
    ------
    RuntimeError
        Without an aggregation in progress, for another aggregation's message, an unknown
        stage, or a roster this node must refuse (see the module docstring).

    """
    config = msg.content.config_records["config"]
    stage, info = str(config["stage"]), str(config["info"]).encode()
    if STATE not in context.state.config_records:
        raise RuntimeError(f"secure aggregation: '{stage}' but this node is in no aggregation")
    node = node_from_json(str(context.state.config_records[STATE]["json"]))
    if node.info != info:
        raise RuntimeError("secure aggregation: message of another aggregation; refusing")
    arrays = from_record(msg.content.array_records["arrays"])
    if stage == "share":
        reply = _share(node, arrays, min_nodes, floor)
    elif stage == "mask":
        reply = _mask(node, context, arrays)
    elif stage == "unmask":
        try:
            reply = _unmask(node, arrays)
        except Refused as exc:  # the server misbehaves: this node leaves the aggregation
            node.forget()
            _save(context, node)
            return RecordDict({REFUSED: ConfigRecord({"reason": str(exc)})})
    else:
        raise RuntimeError(f"secure aggregation: unknown stage '{stage}'")
    _save(context, node)
    return RecordDict({"arrays": to_record(reply)})


def fedavg_reply(cfg: RunConfig, msg: Message, context: Context, n_items: int,
                 content: RecordDict) -> RecordDict:
    """A FedAvg train reply under ``secagg``: the update is kept on the node, keys go up.

    The upload (after clipping and any DP noise) becomes the whole-catalogue vector of
    :func:`florec.protocol.secagg_wire.fedavg_vector`, quantised for the round's
    ``secagg-nodes``; the reply keeps its metrics and carries only the public keys.
    Without ``secagg`` the reply is returned unchanged.
    """
    if not cfg.secagg:
        return content
    config = msg.content.config_records["config"]
    floats, ints = fedavg_vector(from_record(content.array_records["arrays"]), n_items)
    clip = fedavg_range(cfg.secagg_clip, cfg.aggregation, cfg.weighting)
    codes = pack(floats, ints, clip, int(config["secagg-nodes"]))
    keys = advertise(context, int(msg.metadata.dst_node_id), codes, str(config["secagg-info"]))
    return RecordDict({"arrays": to_record(keys), "metrics": content.metric_records["metrics"]})
