"""Key agreement and mask expansion under secure aggregation (:mod:`florec.protocol.secagg`).

X25519 key pairs, a pair seed both ends of a pair derive alike (HKDF-SHA256 of the X25519
shared secret) and its expansion into a uint32 mask with the ChaCha20 keystream (a CSPRNG).
The protocol that uses them, for FedAvg rounds and Fair Sampling's item popularity alike, is
:mod:`florec.protocol.secagg` (double masking, Shamir-shared secrets, dropouts recovered).

Flower 1.42 ships SecAgg+ only as a workflow over the legacy ``LegacyContext`` / ``FitIns``
ServerApp (``flwr.server.workflow.SecAggPlusWorkflow``); it cannot run inside a Message-API
strategy's stages, and its default quantisation overflows past about 1,023 clients.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["KEY_BYTES", "mask_vector", "new_keypair", "pair_seed"]

#: bytes of an X25519 key
KEY_BYTES = 32


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes ``(private, public)``."""
    sk = X25519PrivateKey.generate()
    raw_sk = sk.private_bytes_raw()
    raw_pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw_sk, raw_pk


def pair_seed(own_private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """The 32-byte seed two nodes share: HKDF-SHA256 of their X25519 shared secret."""
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def mask_vector(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint32 words of the ChaCha20 keystream of ``seed`` (a CSPRNG)."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * length)), dtype="<u4").astype(np.uint32)
