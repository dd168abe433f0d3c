"""Secure aggregation with dropouts: double masking and Shamir shares (Bonawitz et al., CCS 2017).

Participants ``u`` with vectors ``x_u`` (quantised to integers mod ``2^32``,
:func:`florec.protocol.fixed_point.quantize`) and a threshold ``t`` (:func:`default_threshold`:
``max(floor(n/2) + 1, ceil(2n/3))``):

1. *advertise*: node ``u`` draws two X25519 key pairs, ``(c_u, C_u)`` to encrypt shares for
   its peers and ``(s_u, S_u)`` to agree pair masks, and uploads ``C_u, S_u``.
2. *share*: ``u`` draws a self-mask seed ``b_u`` and Shamir-splits (threshold ``t``) both
   ``b_u`` and its private key ``s_u`` among the participants; the share for peer ``v`` is
   encrypted with ChaCha20-Poly1305 under ``HKDF(X25519(c_u, C_v), info | "u>v")``, a key of
   that direction only (each key seals one message, so its zero nonce is never reused), and
   routed by the server, which cannot read it. Shamir sharing is over GF(2^521 - 1)
   (:mod:`florec.protocol.shamir`).
3. *mask*: ``u`` uploads ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``
   (mod ``2^32``) with ``s_uv = HKDF(X25519(s_u, S_v))`` over the nodes ``v`` whose shares
   reached it, and the PRG ChaCha20 (:func:`florec.protocol.secure_sum.mask_vector`).
4. *unmask*: the server names the nodes whose ``y`` arrived (alive) and those that did not
   (dropped). Each alive node returns its share of ``b_v`` for every alive ``v`` and its share
   of ``s_v`` for every dropped ``v``, and **never both for one node**: it remembers what it
   revealed and refuses a request that would reveal the other secret of any node. It also
   refuses ids outside the roster, and fewer than ``t`` listed-alive nodes whose shares it
   holds (made-up or never-shared ids do not count). With ``t`` shares the server rebuilds
   every ``b_v`` of the alive and every ``s_v`` of the dropped, removes their masks and gets
   ``sum_{alive} x_u`` in one pass: up to ``n - t`` dropouts after masking cost no restart.

What is guaranteed, with ``c`` colluding nodes (``c < t``):

- *honest-but-curious server*: it learns ``sum_{alive} x_u`` and which nodes dropped, nothing
  else about any one input;
- *server that lies in step 4* (claims a live node dropped, or shows different alive/dropped
  lists to different nodes): each honest node gives at most one share of a victim's two
  secrets, so the server holds at most ``n + c`` of the ``2t`` it needs; it learns nothing
  about a node while ``c < 2t - n`` (at the default ``t``, about ``n / 3`` colluders; the
  bound is tight: tested);
- *not covered*: a server that forwards forged public keys in steps 1-2 (there is no PKI: keys
  are not authenticated, so such a server can stand in for every peer of a node and read its
  shares; Flower node ids come from the server too), and Bonawitz et al.'s signed consistency
  round (it guards the same ``2t > n + c`` bound here). Each class holds one node's or the
  server's state for one aggregation; :meth:`SecAggNode.forget` drops its secrets.

:func:`florec.protocol.secagg_sim.simulate` runs the four steps in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from florec.protocol import shamir
from florec.protocol.secure_sum import mask_vector, new_keypair, pair_seed

__all__ = ["Refused", "SecAggNode", "SecAggServer", "default_threshold"]


class Refused(RuntimeError):
    """A node refuses an unmask request that would expose a node's input."""


def default_threshold(n_nodes: int) -> int:
    """``t = max(floor(n/2) + 1, ceil(2n/3))``: split alive/dropped views need ``c >= 2t - n``.

    A server that shows some nodes a victim as alive and others as dropped gets at most one
    share of the victim's two secrets from each honest node, so with ``c`` colluding nodes it
    holds at most ``n + c`` shares and needs ``2t``: it fails while ``c < 2t - n`` (about
    ``n / 3`` colluders at this ``t``). Dropouts after masking are tolerated up to ``n - t``.
    """
    return max(n_nodes // 2 + 1, -(-2 * n_nodes // 3))


def dp_noise_shares(num_nodes: int, distributed_dp: bool) -> int:
    """The fewest node noise shares a released sum holds under distributed DP; 0 otherwise.

    With ``dp-mode='distributed'`` the threshold's floor is ``t = default_threshold(num-nodes)``
    (a run-config value, not the server's word): nodes refuse to unmask a sum of fewer masked
    vectors, and each adds noise variance :math:`z^2 C^2 / t`, so every released sum carries at
    least the accounted :math:`z^2 C^2` however many nodes drop out (with all ``n`` alive,
    ``n / t`` <= 1.5 times it: the price of tolerating dropouts).
    """
    return default_threshold(num_nodes) if distributed_dp else 0


def _seal(key: bytes, sender: int, receiver: int, plain: bytes) -> bytes:
    """AEAD under a key of the ordered pair ``sender > receiver`` (used once: zero nonce)."""
    return ChaCha20Poly1305(key).encrypt(b"\0" * 12, plain, f"{sender}>{receiver}".encode())


def _open(key: bytes, sender: int, receiver: int, sealed: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(b"\0" * 12, sealed, f"{sender}>{receiver}".encode())


SB = shamir.SHARE_BYTES


def _pair_masks(own: int, own_sk: bytes, peers: dict[int, bytes], info: bytes,
                length: int) -> np.ndarray:
    """``sum_{v > own} PRG(s_uv) - sum_{v < own} PRG(s_uv)`` (mod 2^32)."""
    total = np.zeros(length, np.uint32)
    for v, pk in peers.items():
        if v != own:
            m = mask_vector(pair_seed(own_sk, pk, info), length)
            total = total + m if v > own else total - m
    return total


@dataclass
class SecAggNode:
    """One node's state through one secure aggregation (see the module docstring)."""

    node_id: int
    threshold: int
    info: bytes
    c_sk: bytes = b""
    s_sk: bytes = b""
    b_seed: bytes = b""
    own_share: bytes = b""
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    received: dict[int, bytes] = field(default_factory=dict)
    revealed: dict[int, str] = field(default_factory=dict)

    def advertise(self) -> tuple[bytes, bytes]:
        """Step 1: the public keys ``(C_u, S_u)``."""
        self.c_sk, c_pk = new_keypair()
        self.s_sk, s_pk = new_keypair()
        return c_pk, s_pk

    def _channel(self, sender: int, receiver: int) -> bytes:
        """The key of the one message ``sender -> receiver``; each direction has its own."""
        peer = receiver if sender == self.node_id else sender
        return pair_seed(self.c_sk, self.roster[peer][0],
                         self.info + f"|shares|{sender}>{receiver}".encode())

    def share(self, roster: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Step 2: encrypted shares of ``b_u`` and ``s_u`` for every peer of ``roster``."""
        if len(roster) < self.threshold:
            raise Refused(f"{len(roster)} participants are fewer than the threshold "
                          f"{self.threshold}")
        self.roster = dict(sorted(roster.items()))
        self.b_seed = os.urandom(32)
        ids = list(self.roster)
        b_sh = shamir.split(self.b_seed, self.threshold, len(ids))
        s_sh = shamir.split(self.s_sk, self.threshold, len(ids))
        own = ids.index(self.node_id)
        self.own_share = b_sh[own] + s_sh[own]  # never leaves the node
        return {v: _seal(self._channel(self.node_id, v), self.node_id, v, b_sh[i] + s_sh[i])
                for i, v in enumerate(ids) if v != self.node_id}

    def mask(self, codes: np.ndarray, inbox: dict[int, bytes]) -> np.ndarray:
        """Step 3: ``y_u`` over the peers whose shares reached this node (``inbox``)."""
        self.received = {v: _open(self._channel(v, self.node_id), v, self.node_id, c)
                         for v, c in inbox.items() if v != self.node_id}
        self.received[self.node_id] = self.own_share
        peers = {v: self.roster[v][1] for v in self.received}
        if len(peers) < self.threshold:
            raise Refused(f"shares from {len(peers)} nodes are fewer than the threshold")
        y = np.asarray(codes, np.uint32) + mask_vector(self.b_seed, len(codes))
        return y + _pair_masks(self.node_id, self.s_sk, peers, self.info, len(codes))

    def unmask(self, alive: list[int], dropped: list[int]) -> dict[int, tuple[str, bytes]]:
        """Step 4: ``{v: ("b"|"s", share)}``; refuses to reveal both secrets of any node.

        Only the listed nodes whose shares this node holds count toward the threshold, so
        padding the alive list does not get past it.

        Raises
        ------
        Refused
            If a listed id is not in the roster, fewer than ``threshold`` listed-alive nodes
            are ones whose shares this node holds, a node is both alive and dropped, this node
            is called dropped, or some node's other secret was revealed before.

        """
        alive_set, dropped_set = set(alive), set(dropped)
        unknown = (alive_set | dropped_set) - set(self.roster)
        if unknown:
            raise Refused(f"unknown node id(s) {sorted(unknown)[:5]} in the unmask request")
        held = alive_set & set(self.received)
        if len(held) < self.threshold:
            raise Refused(f"{len(held)} alive nodes whose shares this node holds are fewer "
                          f"than the threshold {self.threshold}")
        if alive_set & dropped_set or self.node_id in dropped_set:
            raise Refused("a node is listed both alive and dropped (or this node as dropped)")
        want = {v: "b" for v in alive_set} | {v: "s" for v in dropped_set}
        clash = [v for v, kind in want.items() if self.revealed.get(v, kind) != kind]
        if clash:
            raise Refused(f"node(s) {sorted(clash)}: the other secret was already revealed; "
                          "revealing both would unmask their input")
        out = {}
        for v, kind in want.items():
            if v in self.received:
                share = self.received[v]
                out[v] = (kind, share[:SB] if kind == "b" else share[SB:])
                self.revealed[v] = kind
        return out

    def forget(self) -> None:
        """Drop every secret (the aggregation is over); what was revealed is remembered."""
        self.c_sk = self.s_sk = self.b_seed = self.own_share = b""
        self.received = {}


@dataclass
class SecAggServer:
    """The server's side: routes shares, collects masked vectors, removes the masks."""

    threshold: int
    info: bytes
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)

    def route(self, outboxes: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Step 2 to 3: each node's inbox (what every node that finished step 2 sent it)."""
        self.shared = sorted(outboxes)
        return {v: {u: box[v] for u, box in outboxes.items() if v in box} for v in self.shared}

    def unmask_sum(self, uploads: dict[int, np.ndarray],
                   reveals: dict[int, dict[int, tuple[str, bytes]]]) -> np.ndarray:
        """Step 4: the sum of the alive nodes' codes (mod 2^32) from ``t`` nodes' reveals."""
        alive = sorted(uploads)
        dropped = [v for v in self.shared if v not in uploads]
        ids = sorted(self.roster)  # the nodes number Shamir points in sorted roster order
        point = {v: ids.index(v) + 1 for v in ids}
        length = len(next(iter(uploads.values())))
        total = np.zeros(length, np.uint32)
        for y in uploads.values():
            total = total + np.asarray(y, np.uint32)
        for v in alive + dropped:
            kind = "b" if v in uploads else "s"
            shares = {point[w]: r[v][1] for w, r in reveals.items()
                      if v in r and r[v][0] == kind}
            if len(shares) < self.threshold:
                raise RuntimeError(f"only {len(shares)} shares of node {v}'s {kind}-secret")
            secret = shamir.combine(dict(list(shares.items())[:self.threshold]))
            if kind == "b":
                total = total - mask_vector(secret, length)
            else:  # the alive peers' pair masks with the dropped node v
                peers = {w: self.roster[w][1] for w in alive}
                total = total + _pair_masks(v, secret, peers, self.info, length)
        return total
