"""Secure aggregation's four steps in one process: the sum and what each step costs.

For tests and the cost bench (``bench/secagg_cost.py``); a federated run exchanges the same
steps in Flower messages (:mod:`florec.client.secagg_node`, :mod:`florec.server.secagg`).
"""

from __future__ import annotations

import time

import numpy as np

from florec.protocol.fixed_point import dequantize, quantize
from florec.protocol.secagg import SecAggNode, SecAggServer, default_threshold


def simulate(vectors: dict[int, np.ndarray], clip: float, threshold: int | None = None,
             drop_after_mask: frozenset[int] = frozenset(), info: bytes = b"florec-secagg"
             ) -> tuple[np.ndarray, dict[str, int]]:
    """Run the four steps in one process (tests and the cost bench); returns sum and bytes.

    Parameters
    ----------
    vectors : dict of int to np.ndarray
        Each node's float vector (same length).
    clip : float
        Quantisation range ``R``.
    threshold : int, optional
        ``t``; default :func:`default_threshold`.
    drop_after_mask : frozenset of int
        Nodes that finish step 2 but never upload their masked vector.
    info : bytes
        Names the aggregation (keys of the pair masks and share channels).

    Returns
    -------
    (np.ndarray, dict)
        The float sum over the nodes that uploaded, and the bytes each step moved
        (``up``/``down`` per node summed over nodes, and ``plain_up`` for a float32 upload),
        one node's mean masking time and the server's unmasking time (seconds).

    """
    n = len(vectors)
    t = threshold or default_threshold(n)
    nodes = {u: SecAggNode(u, t, info) for u in sorted(vectors)}
    server = SecAggServer(t, info)
    server.roster = {u: node.advertise() for u, node in nodes.items()}
    up = down = 0
    up += 64 * n
    down += 64 * n * n
    outboxes = {u: node.share(server.roster) for u, node in nodes.items()}
    up += sum(len(c) for u, box in outboxes.items() for v, c in box.items() if v != u)
    inboxes = server.route(outboxes)
    down += sum(len(c) for u, box in inboxes.items() for v, c in box.items() if v != u)
    uploads = {}
    t0 = time.perf_counter()
    for u, node in nodes.items():
        codes, _ = quantize(vectors[u], clip, n)
        y = node.mask(codes, inboxes[u])
        if u not in drop_after_mask:
            uploads[u] = y
    mask_s = (time.perf_counter() - t0) / n
    up += 4 * sum(len(y) for y in uploads.values())
    alive = sorted(uploads)
    dropped = [v for v in server.shared if v not in uploads]
    reveals = {u: nodes[u].unmask(alive, dropped) for u in alive}
    down += 8 * n * len(alive)
    up += sum(len(s) + 8 for r in reveals.values() for _, s in r.values())
    t0 = time.perf_counter()
    total = server.unmask_sum(uploads, reveals)
    server_s = time.perf_counter() - t0
    for node in nodes.values():
        node.forget()
    length = len(next(iter(vectors.values())))
    return (dequantize(total, clip, n, len(alive)),
            {"up": up, "down": down, "plain_up": 4 * length * len(alive),
             "node_mask_s": mask_s, "server_unmask_s": server_s})
