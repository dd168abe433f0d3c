"""Secure aggregation with double masking and Shamir shares: sums, dropouts, faked dropouts."""

from __future__ import annotations

import numpy as np
import pytest

from florec.protocol import shamir
from florec.protocol.fixed_point import dequantize, quant_bits, quantize
from florec.protocol.secagg import (
    SB,
    Refused,
    SecAggNode,
    SecAggServer,
    _pair_masks,
    default_threshold,
)
from florec.protocol.secagg_sim import simulate
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


def test_the_two_directions_of_a_share_channel_have_their_own_key():
    xs = vectors(2, length=4, seed=6)
    u, v = sorted(xs)
    nodes = {w: SecAggNode(w, 2, b"dir") for w in xs}
    roster = {w: node.advertise() for w, node in nodes.items()}
    out = {w: node.share(roster) for w, node in nodes.items()}
    for w in xs:
        nodes[w].mask(np.zeros(4, np.uint32), {p: box[w] for p, box in out.items() if p != w})
    assert nodes[u]._channel(u, v) == nodes[v]._channel(u, v)  # both ends derive one key ...
    assert nodes[u]._channel(u, v) != nodes[u]._channel(v, u)  # ... per direction
    c_uv, c_vu = out[u][v][:-16], out[v][u][:-16]  # ciphertexts without their tags
    p_uv, p_vu = nodes[v].received[u], nodes[u].received[v]
    xor_c = bytes(a ^ b for a, b in zip(c_uv, c_vu, strict=True))
    xor_p = bytes(a ^ b for a, b in zip(p_uv, p_vu, strict=True))
    assert xor_c != xor_p
    # equal to within chance only: about 1/256 of the bytes agree
    assert sum(a == b for a, b in zip(xor_c, xor_p, strict=True)) < len(xor_p) // 16


def combine_or_none(shares: dict[int, bytes]) -> bytes | None:
    """Shamir's combine, or None when the shares rebuild no secret."""
    try:
        return shamir.combine(shares)
    except ValueError:
        return None


def test_the_reviewers_nonce_reuse_attack_with_two_colluders_no_longer_recovers_an_input():
    # /tmp/secagg_attack.py: n = 10, t = 6, 4 nodes drop after masking; the server XORs the two
    # directions' ciphertexts of the victim and each dropped node, takes the victim's honestly
    # revealed s-share of that dropped node, and adds two colluders' shares of s_victim
    xs = vectors(10, length=5, seed=7)
    ids = sorted(xs)
    t = 6
    info = b"test"
    nodes = {u: SecAggNode(u, t, info) for u in ids}
    roster = {u: nodes[u].advertise() for u in ids}
    out = {u: nodes[u].share(roster) for u in ids}
    y = {u: nodes[u].mask(quantize(xs[u], CLIP, 10)[0],
                          {p: box[u] for p, box in out.items() if p != u}) for u in ids}
    dropped, alive = ids[6:], ids[:6]
    reveals = {u: nodes[u].unmask(alive, dropped) for u in alive}
    victim, colluders = ids[0], ids[1:3]
    point = {v: i + 1 for i, v in enumerate(ids)}
    s_shares = {}
    for d in dropped:
        xor = bytes(a ^ b for a, b in zip(out[victim][d][:-16], out[d][victim][:-16],
                                          strict=True))
        s_shares[point[d]] = bytes(a ^ b for a, b in zip(xor[SB:], reveals[victim][d][1],
                                                         strict=True))
    for c in colluders:
        s_shares[point[c]] = nodes[c].received[victim][SB:]
    assert len(s_shares) == t  # the attack gathers t values, as in the reviewer's run ...
    s_sk = combine_or_none(s_shares)
    assert s_sk != nodes[victim].s_sk  # ... which no longer rebuild the victim's key
    b_seed = shamir.combine({point[w]: r[victim][1] for w, r in list(reveals.items())[:t]})
    peers = {w: roster[w][1] for w in ids}
    if s_sk is not None and len(s_sk) == 32:
        codes = y[victim] - mask_vector(b_seed, 5) - _pair_masks(victim, s_sk, peers, info, 5)
        assert not np.array_equal(codes, quantize(xs[victim], CLIP, 10)[0])


def split_view_shares(xs: dict[int, np.ndarray], t: int, n_colluders: int, n_shown_alive: int
                      ) -> tuple[int, int, dict[str, bytes | None], SecAggNode]:
    """A server showing the victim alive to some nodes and dropped to the others.

    Every node is alive and uploaded. The victim and ``n_shown_alive`` honest nodes get
    ``alive = all``; the other honest nodes get ``dropped = [victim]``; the colluders hand over
    the victim's shares of both secrets. Returns the b- and s-share counts, the secrets
    rebuilt where ``t`` shares were gathered, and the victim.
    """
    nodes, server, _ = setup_round(xs, t)
    ids = sorted(xs)
    point = {v: ids.index(v) + 1 for v in ids}
    victim, colluders = ids[0], ids[1:1 + n_colluders]
    honest = ids[1 + n_colluders:]
    b = {point[victim]: nodes[victim].unmask(ids, [])[victim][1]}
    s: dict[int, bytes] = {}
    for i, w in enumerate(honest):
        if i < n_shown_alive:
            b[point[w]] = nodes[w].unmask(ids, [])[victim][1]
        else:
            s[point[w]] = nodes[w].unmask([u for u in ids if u != victim], [victim])[victim][1]
    for c in colluders:
        b[point[c]] = nodes[c].received[victim][:SB]
        s[point[c]] = nodes[c].received[victim][SB:]
    got = {kind: combine_or_none(dict(list(sh.items())[:t])) if len(sh) >= t else None
           for kind, sh in (("b", b), ("s", s))}
    return len(b), len(s), got, nodes[victim]


def test_split_alive_views_need_2t_minus_n_colluders_at_the_default_threshold():
    xs = vectors(10, length=5, seed=8)
    t = default_threshold(10)
    assert t == 7
    for shown_alive in range(0, 10 - 1 - (2 * t - 10 - 1) + 1):  # every split, c = 2t - n - 1
        n_b, n_s, got, victim = split_view_shares(xs, t, 2 * t - 10 - 1, shown_alive)
        assert n_b + n_s == 10 + (2 * t - 10 - 1)  # one share per honest node, two per colluder
        assert min(n_b, n_s) < t
        assert got["b"] != victim.b_seed or got["s"] != victim.s_sk
    # with c = 2t - n colluders the split-view server wins: the bound is tight
    c = 2 * t - 10
    _, _, got, victim = split_view_shares(xs, t, c, t - 1 - c)  # b: 1 + (t-1-c) + c, s: t
    assert got["b"] == victim.b_seed and got["s"] == victim.s_sk


def test_the_reviewers_split_view_attack_without_colluders_no_longer_recovers_an_input():
    # /tmp/secagg_attack2.py: n = 10, t = 6, every node honest and alive; the victim is shown
    # four nodes as dropped, five others see everyone alive, two see the victim dropped; the
    # XOR of the two directions' ciphertexts turned the victim's s-shares of the "dropped"
    # into their shares of s_victim
    xs = vectors(10, length=5, seed=9)
    ids = sorted(xs)
    t, info = 6, b"test"
    nodes = {u: SecAggNode(u, t, info) for u in ids}
    roster = {u: nodes[u].advertise() for u in ids}
    out = {u: nodes[u].share(roster) for u in ids}
    y = {u: nodes[u].mask(quantize(xs[u], CLIP, 10)[0],
                          {p: box[u] for p, box in out.items() if p != u}) for u in ids}
    point = {v: i + 1 for i, v in enumerate(ids)}
    victim, shown_dropped = ids[0], ids[1:5]
    rv = nodes[victim].unmask([victim] + ids[5:], shown_dropped)
    b = {point[w]: nodes[w].unmask(ids, [])[victim][1] for w in ids[1:6]}
    b[point[victim]] = rv[victim][1]
    s = {point[w]: nodes[w].unmask(ids[1:], [victim])[victim][1] for w in ids[6:8]}
    for d in shown_dropped:
        xor = bytes(a ^ c for a, c in zip(out[victim][d][:-16], out[d][victim][:-16],
                                          strict=True))
        s[point[d]] = bytes(a ^ c for a, c in zip(xor[SB:], rv[d][1], strict=True))
    assert shamir.combine(b) == nodes[victim].b_seed  # the split view got the self mask ...
    s_sk = combine_or_none(s)
    assert s_sk != nodes[victim].s_sk  # ... but no longer the pair-mask key
    if s_sk is not None and len(s_sk) == 32:
        peers = {w: roster[w][1] for w in ids}
        codes = (y[victim] - mask_vector(nodes[victim].b_seed, 5)
                 - _pair_masks(victim, s_sk, peers, info, 5))
        assert not np.array_equal(codes, quantize(xs[victim], CLIP, 10)[0])
    # and no split of the nine others' views gets t shares of both secrets (n + 0 < 2t)
    assert max(min(n_b, n_s) for n_b, n_s, _, _ in
               (split_view_shares(xs, t, 0, k) for k in range(0, 10))) < t


def test_unmask_counts_only_listed_nodes_whose_shares_it_holds_and_refuses_made_up_ids():
    xs = vectors(9, seed=10)
    ids = sorted(xs)
    info, t = b"pad", 6
    nodes = {u: SecAggNode(u, t, info) for u in ids}
    roster = {u: nodes[u].advertise() for u in ids}
    sharers = ids[:6]  # three roster nodes never share: nobody holds their shares
    boxes = {u: nodes[u].share(roster) for u in sharers}
    for u in sharers:
        nodes[u].mask(quantize(xs[u], CLIP, 9)[0], {p: boxes[p][u] for p in sharers if p != u})
    node = nodes[sharers[0]]
    with pytest.raises(Refused, match="unknown node id"):
        node.unmask(sharers[:5] + [10**9 + 1, 10**9 + 2], [])  # padded with made-up ids
    with pytest.raises(Refused, match="5 alive nodes whose shares this node holds"):
        node.unmask(sharers[:5] + ids[6:], [])  # 8 listed, but shares of only 5
    assert node.revealed == {}
    assert len(node.unmask(sharers, [])) == 6  # the honest request is answered
