"""Secure aggregation with double masking and Shamir shares: sums, dropouts, faked dropouts."""

from __future__ import annotations

import numpy as np
import pytest

from florec.protocol import shamir
from florec.protocol.secagg import (
    Refused,
    SecAggNode,
    SecAggServer,
    _pair_masks,
    dequantize,
    quant_bits,
    quantize,
    simulate,
)
from florec.protocol.secure_sum import mask_vector

CLIP = 0.5


def vectors(n: int, length: int = 300, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(10**6, n, replace=False).tolist())  # Flower-like node ids
    return {u: rng.uniform(-CLIP, CLIP, length) for u in ids}


def quant_error(n: int) -> float:
    return n * CLIP / (2 ** quant_bits(n) - 1) + 1e-12


@pytest.mark.parametrize("n", [2, 61, 1023, 5000])
def test_the_sum_of_n_extreme_codes_never_wraps_the_modulus(n):
    top, _ = quantize(np.full(4, CLIP), CLIP, n)
    total = (top.astype(np.uint64) * n)
    assert total.max() < 2**32
    wrapped = (top * np.uint32(n)).astype(np.uint32)  # what uint32 arithmetic gives
    np.testing.assert_allclose(dequantize(wrapped, CLIP, n, n), n * CLIP, atol=quant_error(n))
    low, _ = quantize(np.full(4, -CLIP), CLIP, n)
    np.testing.assert_allclose(dequantize(low * np.uint32(n), CLIP, n, n), -n * CLIP,
                               atol=quant_error(n))


def test_values_outside_the_range_are_clipped_and_counted():
    codes, clipped = quantize(np.array([-2.0, 0.1, 3.0]), CLIP, 10)
    assert clipped == 2
    np.testing.assert_allclose(dequantize(codes, CLIP, 10, 1)[[0, 2]], [-CLIP, CLIP],
                               atol=quant_error(10))


def test_the_secure_sum_equals_the_plain_sum_within_quantisation_error():
    xs = vectors(10)
    total, cost = simulate(xs, CLIP)
    np.testing.assert_allclose(total, sum(xs.values()), atol=quant_error(10))
    assert cost["up"] > cost["plain_up"]


def test_one_of_ten_nodes_dropping_after_masking_is_recovered_without_a_restart():
    xs = vectors(10, seed=1)
    gone = sorted(xs)[3]
    total, _ = simulate(xs, CLIP, drop_after_mask=frozenset({gone}))
    want = sum(x for u, x in xs.items() if u != gone)
    np.testing.assert_allclose(total, want, atol=quant_error(10))


def setup_round(xs: dict[int, np.ndarray], t: int):
    """Steps 1-3 for every node; returns nodes, server and every masked upload."""
    info = b"test"
    nodes = {u: SecAggNode(u, t, info) for u in xs}
    server = SecAggServer(t, info)
    server.roster = {u: node.advertise() for u, node in sorted(nodes.items())}
    inboxes = server.route({u: node.share(server.roster) for u, node in nodes.items()})
    uploads = {u: node.mask(quantize(xs[u], CLIP, len(xs))[0], inboxes[u])
               for u, node in nodes.items()}
    return nodes, server, uploads


def test_a_server_that_claims_a_live_node_dropped_learns_nothing_about_it():
    xs = vectors(10, seed=2)
    nodes, server, uploads = setup_round(xs, 6)
    victim = sorted(xs)[4]
    alive = [u for u in xs if u != victim]
    reveals = {u: nodes[u].unmask(alive, [victim]) for u in alive}
    # the server rebuilds the victim's pair-mask key and strips its pair masks from y_victim ...
    ids = list(server.roster)
    s_shares = {ids.index(u) + 1: r[victim][1] for u, r in reveals.items()}
    s_victim = shamir.combine(dict(list(s_shares.items())[:6]))
    assert s_victim == nodes[victim].s_sk
    peers = {w: server.roster[w][1] for w in xs}
    stripped = uploads[victim] - _pair_masks(victim, s_victim, peers, b"test", 300)
    # ... and is left with x + PRG(b): uniform words, unrelated to the victim's codes
    codes = quantize(xs[victim], CLIP, 10)[0]
    np.testing.assert_array_equal(stripped, codes + mask_vector(nodes[victim].b_seed, 300))
    assert np.mean(stripped == codes) < 0.01
    assert abs(np.corrcoef(stripped.astype(float), codes.astype(float))[0, 1]) < 0.2
    # asking again with the victim alive (to get its self-mask shares) is refused by everyone
    for u in alive:
        with pytest.raises(Refused, match="already revealed"):
            nodes[u].unmask(list(xs), [])
    # the honest sum over the nine others still comes out
    total = server.unmask_sum({u: uploads[u] for u in alive}, reveals)
    np.testing.assert_allclose(dequantize(total, CLIP, 10, 9),
                               sum(xs[u] for u in alive), atol=quant_error(10))


def test_unmask_requests_that_would_expose_a_node_are_refused():
    xs = vectors(6, seed=3)
    nodes, _, _ = setup_round(xs, 4)
    ids = sorted(xs)
    node = nodes[ids[0]]
    with pytest.raises(Refused, match="fewer than the threshold"):
        node.unmask(ids[:3], ids[3:])
    with pytest.raises(Refused, match="both alive and dropped"):
        node.unmask(ids, [ids[1]])
    with pytest.raises(Refused, match="this node as dropped"):
        node.unmask(ids[1:], [ids[0]])


def test_a_node_that_drops_before_sharing_is_simply_left_out():
    xs = vectors(8, seed=4)
    info, t = b"x", 5
    nodes = {u: SecAggNode(u, t, info) for u in xs}
    server = SecAggServer(t, info)
    server.roster = {u: node.advertise() for u, node in sorted(nodes.items())}
    late = sorted(xs)[-1]
    inboxes = server.route({u: n.share(server.roster) for u, n in nodes.items() if u != late})
    uploads = {u: nodes[u].mask(quantize(xs[u], CLIP, 8)[0], inboxes[u]) for u in inboxes}
    reveals = {u: nodes[u].unmask(sorted(uploads), []) for u in uploads}
    total = dequantize(server.unmask_sum(uploads, reveals), CLIP, 8, 7)
    np.testing.assert_allclose(total, sum(xs[u] for u in uploads), atol=quant_error(8))


def test_the_sum_does_not_depend_on_the_order_nodes_advertised_in():
    xs = vectors(6, seed=5)
    info, t = b"order", 4
    nodes = {u: SecAggNode(u, t, info) for u in xs}
    server = SecAggServer(t, info)
    server.roster = {u: nodes[u].advertise() for u in sorted(xs, reverse=True)}
    inboxes = server.route({u: n.share(server.roster) for u, n in nodes.items()})
    uploads = {u: nodes[u].mask(quantize(xs[u], CLIP, 6)[0], inboxes[u]) for u in inboxes}
    reveals = {u: nodes[u].unmask(sorted(uploads), []) for u in uploads}
    total = dequantize(server.unmask_sum(uploads, reveals), CLIP, 6, 6)
    np.testing.assert_allclose(total, sum(xs.values()), atol=quant_error(6))


def test_forget_drops_every_secret():
    node = SecAggNode(1, 2, b"i")
    node.advertise()
    node.forget()
    assert not (node.c_sk or node.s_sk or node.b_seed or node.received)
