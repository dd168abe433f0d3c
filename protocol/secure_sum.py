"""Secure sum of integer vectors with pairwise additive masks (Bonawitz et al. 2017, no recovery).

Flower 1.42 ships SecAgg+ only as a workflow over the legacy ``LegacyContext`` / ``FitIns``
ServerApp (``flwr.server.workflow.SecAggPlusWorkflow`` with ``secaggplus_mod`` on the clients);
it cannot run inside a Message-API strategy's setup stages, so FloRec uses this smaller protocol.

Protocol, for participants with node ids ``a < b < ...`` and vectors ``x_a`` (uint32):

1. *keys*: each node draws an X25519 key pair, keeps the private key in its node state and
   uploads the public key.
2. *mask*: the server sends every participant the list of (node id, public key). Node ``a``
   derives, for each peer ``b``, a seed ``k_ab = HKDF-SHA256(X25519(sk_a, pk_b), info)`` (equal
   on both sides; ``info`` names the attempt, so every attempt uses fresh masks) and expands it
   with ChaCha20 into ``m_ab``. It uploads ``y_a = x_a + sum_{b > a} m_ab - sum_{b < a} m_ab``
   (mod 2^32). The masks cancel in ``sum_a y_a = sum_a x_a`` (mod 2^32).

Threat model: an honest-but-curious server and clients that do not collude with it. The server
sees only the public keys, uniformly masked vectors and the sum. A node that drops out after
the keys stage leaves its peers' masks uncancelled: the server then repeats the mask stage with
the survivors (a new attempt, fresh masks); there is no secret sharing of keys, so a malicious
server that fakes dropouts could difference two attempts - this protocol does not defend that.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["KEY_BYTES", "attempt_info", "mask_vector", "masked_upload", "new_keypair",
           "pair_seed", "unmask_sum"]

KEY_BYTES = 32


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes ``(private, public)``."""
    sk = X25519PrivateKey.generate()
    raw_sk = sk.private_bytes_raw()
    raw_pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw_sk, raw_pk


def attempt_info(attempt: int, length: int) -> bytes:
    """The HKDF ``info`` of one secure-sum attempt (fresh masks per attempt and length)."""
    return f"florec-secure-sum|attempt={attempt}|length={length}".encode()


def pair_seed(own_private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """The 32-byte seed two nodes share: HKDF-SHA256 of their X25519 shared secret."""
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def mask_vector(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint32 words of the ChaCha20 keystream of ``seed`` (a CSPRNG)."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * length)), dtype="<u4").astype(np.uint32)


def masked_upload(values: np.ndarray, own_id: int, own_private: bytes,
                  peers: dict[int, bytes], info: bytes) -> np.ndarray:
    """One node's masked vector ``x + sum_{b > a} m_ab - sum_{b < a} m_ab`` (mod 2^32).

    Parameters
    ----------
    values : np.ndarray
        The node's non-negative integer vector (each entry < 2^32).
    own_id : int
        This node's id (the sign of each pair's mask depends on the id order).
    own_private : bytes
        This node's X25519 private key.
    peers : dict of int to bytes
        The other participants' ids and public keys (this node excluded).
    info : bytes
        :func:`attempt_info` of this attempt.

    Returns
    -------
    np.ndarray
        uint32, same length as ``values``.

    """
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= 2**32):
        raise ValueError("secure-sum values must lie in [0, 2^32)")
    out = values.astype(np.uint32)
    for peer, pk in sorted(peers.items()):
        if peer == own_id:
            continue
        m = mask_vector(pair_seed(own_private, pk, info), len(out))
        out = out + m if peer > own_id else out - m  # uint32 arithmetic wraps mod 2^32
    return out


def unmask_sum(uploads: list[np.ndarray]) -> np.ndarray:
    """Sum of all participants' masked vectors (mod 2^32): the plain sum when masks cancel."""
    total = np.zeros(len(uploads[0]), dtype=np.uint32)
    for y in uploads:
        total = total + np.asarray(y, dtype=np.uint32)
    return total.astype(np.int64)
