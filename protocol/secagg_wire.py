"""What secure aggregation's messages carry, shared by the nodes and the server.

:mod:`florec.protocol.secagg` is the protocol; this module is its encoding in Flower records and
the fixed-size vector a node feeds it:

- *exchanges* after the keys (``share``, ``mask``, ``unmask``) are ``train.setup`` messages with
  config ``setup = "secagg"``, ``stage`` and ``info`` (the aggregation's name); node ids travel
  as uint64 arrays (Flower ids are 64-bit unsigned).
- *the vector* (:func:`pack`): a float part quantised over ``[-R, R]``
  (:func:`florec.protocol.fixed_point.quantize`), then non-negative integers summed exactly, then
  one word counting this node's clipped floats, so the server learns only the total number
  clipped.
- *FedAvg's layout* (:func:`fedavg_vector`): every node sends the same length whatever it
  trained, the whole catalogue: ``item_emb`` (n x d) and ``item_bias`` (n) summed over its
  users, plus, for ``sparse``, the per-item counts of users that changed each row.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from florec.protocol.fixed_point import MODULUS_BITS, dequantize, quantize
from florec.protocol.secagg import SecAggNode
from florec.protocol.secure_sum import KEY_BYTES
from florec.protocol.shamir import SHARE_BYTES

__all__ = ["KEY_BYTES", "REFUSED", "SEALED_BYTES", "SETUP_NAME", "SHARE_WIDTH", "STAGES",
           "decode_roster", "encode_roster", "fedavg_range", "fedavg_sums", "fedavg_vector",
           "node_from_json", "node_to_json", "pack", "unpack"]

#: ``setup`` value of a secure-aggregation exchange (``train.setup`` message config)
SETUP_NAME = "secagg"
#: ConfigRecord of an unmask reply in which the node refuses (``reason`` says why)
REFUSED = "secagg-refused"
#: the exchanges after the keys, in order
STAGES = ("share", "mask", "unmask")
#: bytes of one share value, and of a peer's sealed pair of shares (b and s, plus the AEAD tag)
SHARE_WIDTH = SHARE_BYTES
SEALED_BYTES = 2 * SHARE_BYTES + 16


def encode_roster(roster: dict[int, tuple[bytes, bytes]]) -> dict[str, np.ndarray]:
    """Arrays of a roster ``{node: (C, S)}``: ``ids`` (uint64), ``c_pk`` and ``s_pk`` (n, 32)."""
    ids = sorted(roster)
    keys = [np.frombuffer(b"".join(roster[i][k] for i in ids), np.uint8).reshape(-1, KEY_BYTES)
            for k in (0, 1)]
    return {"ids": np.array(ids, np.uint64), "c_pk": keys[0], "s_pk": keys[1]}


def decode_roster(arrays: dict[str, np.ndarray]) -> dict[int, tuple[bytes, bytes]]:
    """The roster from :func:`encode_roster`'s arrays."""
    return {int(i): (c.astype(np.uint8).tobytes(), s.astype(np.uint8).tobytes())
            for i, c, s in zip(arrays["ids"].astype(np.uint64), arrays["c_pk"], arrays["s_pk"],
                               strict=True)}


def pack(floats: np.ndarray, ints: np.ndarray, clip: float, n_nodes: int
         ) -> np.ndarray:
    r"""One node's input to a secure sum over at most ``n_nodes`` nodes (uint32 words).

    ``[quantize(floats, R), ints, clipped]``: the float part's codes sum without wrapping
    (:func:`florec.protocol.fixed_point.quant_bits`); each integer must stay below
    :math:`2^{32} / n_{nodes}` so that theirs do not wrap either.

    Raises
    ------
    ValueError
        If an integer is negative or too large for ``n_nodes`` nodes.

    """
    ints = np.asarray(ints, np.int64).ravel()
    limit = 2**MODULUS_BITS // max(n_nodes, 1)
    if ints.size and (ints.min() < 0 or ints.max() >= limit):
        raise ValueError(f"secure-sum integers must lie in [0, {limit}) for {n_nodes} nodes")
    codes, clipped = quantize(floats, clip, n_nodes) if np.size(floats) else (
        np.zeros(0, np.uint32), 0)
    return np.concatenate([codes, ints.astype(np.uint32), np.array([clipped], np.uint32)])


def unpack(total: np.ndarray, n_floats: int, clip: float, n_nodes: int, n_summed: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(float sum, integer sums, entries clipped)`` from the sum of ``n_summed`` packs."""
    total = np.asarray(total, np.uint32)
    floats = dequantize(total[:n_floats], clip, n_nodes, n_summed)
    return floats, total[n_floats:-1].astype(np.int64), int(total[-1])


#: ``secagg-clip = 0``: the range for FedAvg's layouts (ML-1M, 61 nodes, round 1: the largest
#: entry of a node's upload was 1,498 for ``dense`` weighted by interactions, 4.6 for ``sparse``)
AUTO_RANGE = {"weighted": 1e4, "other": 64.0}


def fedavg_range(clip: float, aggregation: str, weighting: str) -> float:
    """The quantisation range ``R`` of a FedAvg run: ``clip``, or by layout when it is 0."""
    if clip > 0:
        return clip
    weighted = aggregation == "dense" and weighting == "interactions"
    return AUTO_RANGE["weighted" if weighted else "other"]


def fedavg_vector(arrays: dict[str, np.ndarray], n_items: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(floats, ints)`` of a FedAvg upload over the whole catalogue (module docstring).

    A sparse upload (``items``, ``item_emb``, ``item_bias``, ``counts``) is scattered into
    ``n_items`` rows and carries its counts as integers; a dense one carries none.
    """
    if "items" not in arrays:
        return np.concatenate([arrays["item_emb"].ravel(), arrays["item_bias"]]), np.zeros(0)
    d = arrays["item_emb"].shape[1]
    emb, bias = np.zeros((n_items, d)), np.zeros(n_items)
    counts = np.zeros(n_items, np.int64)
    np.add.at(emb, arrays["items"], arrays["item_emb"])
    np.add.at(bias, arrays["items"], arrays["item_bias"])
    np.add.at(counts, arrays["items"], arrays["counts"])
    return np.concatenate([emb.ravel(), bias]), counts


def fedavg_sums(floats: np.ndarray, ints: np.ndarray, n_items: int, dim: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summed ``item_emb`` (n, d), ``item_bias`` (n) and counts (n; zeros when dense)."""
    emb = floats[: n_items * dim].reshape(n_items, dim)
    counts = ints if len(ints) else np.zeros(n_items, np.int64)
    return emb, floats[n_items * dim:], counts


def node_to_json(node: SecAggNode) -> str:
    """A node's protocol state as JSON (bytes as hex), to keep in its Context between messages."""
    hx: dict[str, Any] = {k: getattr(node, k).hex() for k in ("info", "c_sk", "s_sk", "b_seed",
                                                             "own_share")}
    return json.dumps(hx | {
        "node_id": node.node_id, "threshold": node.threshold,
        "roster": {str(v): [c.hex(), s.hex()] for v, (c, s) in node.roster.items()},
        "received": {str(v): s.hex() for v, s in node.received.items()},
        "revealed": {str(v): k for v, k in node.revealed.items()}})


def node_from_json(text: str) -> SecAggNode:
    """The node state :func:`node_to_json` wrote."""
    raw = json.loads(text)
    node = SecAggNode(int(raw["node_id"]), int(raw["threshold"]), bytes.fromhex(raw["info"]))
    for key in ("c_sk", "s_sk", "b_seed", "own_share"):
        setattr(node, key, bytes.fromhex(raw[key]))
    node.roster = {int(v): (bytes.fromhex(c), bytes.fromhex(s))
                   for v, (c, s) in raw["roster"].items()}
    node.received = {int(v): bytes.fromhex(s) for v, s in raw["received"].items()}
    node.revealed = {int(v): str(k) for v, k in raw["revealed"].items()}
    return node
