"""FedCIA alignment: dense and factored modes agree, the loss falls, rotations do not matter."""

import numpy as np
import pytest
import torch

from florec.client.trainers.align import (
    align_dense,
    align_eigen,
    align_factored,
    haar_rotation,
    similarity_upload,
)
from florec.strategies.fedcia import eigen_downlink, top_factor

N, D = 40, 6


def tables(k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(k)]


def mean_gram(embs):
    return sum(e @ e.T for e in embs) / len(embs)


@pytest.mark.parametrize("squared", [False, True])
def test_factored_alignment_with_full_rank_equals_dense(squared):
    embs = tables()
    s_bar = mean_gram(embs)
    factor, energy = top_factor(s_bar.numpy(), N)
    assert energy == pytest.approx(1.0)
    a, b = embs[0].clone(), embs[0].clone()
    lr = 0.001 if squared else 0.05
    align_dense([a], s_bar, 100, lr, 1e-4, squared)
    align_factored([b], torch.from_numpy(factor), 100, lr, 1e-4, squared)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_alignment_lowers_the_distance_to_the_aggregate():
    embs = tables()
    s_bar = mean_gram(embs)
    emb = embs[1].clone()
    (before,), (after,) = align_dense([emb], s_bar, 100, 0.02)
    assert after < before
    assert float(torch.linalg.matrix_norm(emb @ emb.T - s_bar)) == pytest.approx(after)


def test_alignment_is_rotation_equivariant():
    embs = tables()
    s_bar = mean_gram(embs)
    q = torch.from_numpy(haar_rotation(D, np.random.default_rng(1)))
    a, b = embs[0].clone(), embs[0] @ q
    align_dense([a], s_bar, 50, 0.05)
    align_dense([b], s_bar, 50, 0.05)
    torch.testing.assert_close(a @ a.T, b @ b.T, atol=1e-10, rtol=0)


def test_a_step_is_skipped_where_the_norm_vanishes():
    emb = tables(1)[0]
    target = emb @ emb.T
    moved = emb.clone()
    (before,), (after,) = align_dense([moved], target, 5, 0.1)
    assert before < 1e-6 and before == after
    torch.testing.assert_close(moved, emb, atol=0, rtol=0)


def test_factored_upload_carries_the_same_similarity():
    emb = tables(1)[0].numpy()
    up = similarity_upload(emb, "factored", 0.0, np.random.default_rng(0))["factor"]
    dense = similarity_upload(emb, "dense", 0.0, np.random.default_rng(0))["gram"]
    np.testing.assert_allclose(up @ up.T, dense, atol=1e-5)
    assert not np.allclose(up, emb, atol=1e-3)  # rotated: the table itself is not revealed


def test_clients_aligned_together_equal_clients_aligned_alone():
    embs = tables(3)
    s_bar = mean_gram(embs)
    together = [e.clone() for e in embs]
    align_dense(together, s_bar, 30, 0.05)
    for e, t in zip(embs, together, strict=True):
        alone = e.clone()
        align_dense([alone], s_bar, 30, 0.05)
        torch.testing.assert_close(alone, t, atol=1e-12, rtol=0)


@pytest.mark.parametrize("squared", [False, True])
def test_factored_alignment_in_the_subspace_equals_the_full_space_steps(squared):
    """r + d < n: the (r + d)-dimensional steps give the n-dimensional iterates."""
    embs = tables(3)
    factor, _ = top_factor(mean_gram(embs).numpy(), 5)  # r + d = 11 < n = 40
    a = torch.from_numpy(factor)
    lr = 0.001 if squared else 0.05
    sub = [e.clone() for e in embs]
    full = [e.clone() for e in embs]
    first, last = align_factored(sub, a, 60, lr, 1e-4, squared)
    first_full, last_full = align_dense(full, a @ a.T, 60, lr, 1e-4, squared)
    for s, f in zip(sub, full, strict=True):
        torch.testing.assert_close(s, f, atol=1e-10, rtol=0)
    np.testing.assert_allclose(first, first_full, rtol=1e-10)
    np.testing.assert_allclose(last, last_full, rtol=1e-8)  # the norm expansion cancels
    assert last[0] < first[0]


def test_subspace_alignment_handles_mixed_widths_and_float32_tables():
    g = torch.Generator().manual_seed(3)
    embs = [0.3 * torch.randn(N, d, generator=g) for d in (6, 3)]
    s_bar = sum(e.double() @ e.double().T for e in embs) / 2
    factor, _ = top_factor(s_bar.numpy(), 4)
    a = torch.from_numpy(factor)
    sub = [e.clone() for e in embs]
    full = [e.double() for e in embs]
    # few steps: near M = 0 the unsquared norm's fixed-size steps amplify float32 round-off
    align_factored(sub, a.float(), 10, 0.05)
    align_dense(full, a @ a.T, 10, 0.05)
    assert all(s.dtype == torch.float32 for s in sub)
    for s, f, e in zip(sub, full, embs, strict=True):
        torch.testing.assert_close(s.double(), f, atol=1e-6, rtol=0)
        assert float((s - e).abs().max()) > 1e-2  # the steps moved the table


def test_subspace_alignment_skips_steps_where_the_norm_vanishes():
    emb = tables(1)[0]
    factor = emb.clone()  # S_bar = E E^T: the client is already aligned
    moved = emb.clone()
    (before,), (after,) = align_factored([moved], factor, 5, 0.1)
    assert before < 1e-6 and before == after
    torch.testing.assert_close(moved, emb, atol=1e-12, rtol=0)


def eigen(target):
    vals, vecs = torch.linalg.eigh((target + target.T) / 2)
    return vecs, vals


@pytest.mark.parametrize("squared", [False, True])
def test_alignment_in_the_eigenbasis_equals_the_dense_steps(squared):
    """Mixed widths and an indefinite, non-symmetric target (a noisy or robust mean)."""
    g = torch.Generator().manual_seed(5)
    embs = [0.3 * torch.randn(N, d, generator=g, dtype=torch.float64) for d in (6, 3)]
    target = mean_gram(embs[:1]) + 0.01 * torch.randn(N, N, generator=g, dtype=torch.float64)
    lr = 0.001 if squared else 0.05
    by_eigen, by_dense = [e.clone() for e in embs], [e.clone() for e in embs]
    first, last = align_eigen(by_eigen, *eigen(target), 60, lr, 1e-4, squared,
                              norm_sq=float((target**2).sum()))
    first_dense, last_dense = align_dense(by_dense, target, 60, lr, 1e-4, squared)
    for a, b, e in zip(by_eigen, by_dense, embs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        assert float((a - e).abs().max()) > 1e-3  # the steps moved the table
    np.testing.assert_allclose(first, first_dense, rtol=1e-10)
    np.testing.assert_allclose(last, last_dense, rtol=1e-8)


def test_alignment_from_the_float32_wire_downlink_matches_float64_dense_steps():
    g = torch.Generator().manual_seed(6)
    embs = [0.3 * torch.randn(N, D, generator=g) for _ in range(2)]
    s_bar = mean_gram([e.double() for e in embs])
    down = eigen_downlink(s_bar.numpy())  # what the server sends: float32
    by_eigen, by_dense = [e.clone() for e in embs], [e.double() for e in embs]
    align_eigen(by_eigen, torch.from_numpy(down["basis"]), torch.from_numpy(down["eigvals"]),
                10, 0.05, norm_sq=float(down["norm-sq"][0]))
    align_dense(by_dense, s_bar, 10, 0.05)
    assert all(e.dtype == torch.float32 for e in by_eigen)
    for a, b in zip(by_eigen, by_dense, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=0)


def test_eigen_alignment_skips_steps_where_the_norm_vanishes():
    emb = tables(1)[0]
    moved = emb.clone()
    (before,), (after,) = align_eigen([moved], *eigen(emb @ emb.T), 5, 0.1)
    assert before < 1e-6 and before == after
    assert torch.equal(moved, emb)  # no step, no round trip through the basis


def test_zero_eigen_steps_leave_float32_tables_bit_identical():
    g = torch.Generator().manual_seed(7)
    embs = [0.3 * torch.randn(N, D, generator=g) for _ in range(2)]
    down = eigen_downlink(mean_gram([e.double() for e in embs]).numpy())
    moved = [e.clone() for e in embs]
    align_eigen(moved, torch.from_numpy(down["basis"]), torch.from_numpy(down["eigvals"]), 0, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(moved, embs, strict=True))


def test_a_truncated_eigenbasis_is_refused():
    emb = tables(1)[0]
    vecs, vals = eigen(emb @ emb.T)
    with pytest.raises(ValueError, match="n x n"):
        align_eigen([emb.clone()], vecs[:, :10], vals[:10], 5, 0.1)
