"""GF-CF central, exact federated and FedCIA-GSP (fedcia.md sections 3 and 9.2)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from florec.models.gfcf import (
    GFCF,
    client_gram,
    filter_from_sums,
    gsp_scores,
    local_filter,
    top_eigvecs,
)


def random_r(users=40, items=25, p=0.2, seed=0):
    r = (np.random.default_rng(seed).random((users, items)) < p).astype(np.float64)
    r[:, -1] = 0  # an item nobody rated
    r[3] = 0  # a user without interactions
    return sp.csr_matrix(r)


def dense_gfcf(r, s, wp):
    """Reference straight from the formula, full SVD in numpy."""
    r = np.asarray(r.toarray(), dtype=np.float64)
    du, di = r.sum(1), r.sum(0)
    iu = np.where(du > 0, 1 / np.sqrt(np.where(du > 0, du, 1)), 0)
    ii = np.where(di > 0, 1 / np.sqrt(np.where(di > 0, di, 1)), 0)
    rt = iu[:, None] * r * ii[None, :]
    _, sig, vt = np.linalg.svd(rt)
    k = min(s, int((sig > 1e-8).sum()))
    v = vt[:k]
    return rt.T @ rt + wp * np.diag(ii) @ v.T @ v @ np.diag(np.sqrt(di))


def split_rows(r, k, seed=1):
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, r.shape[0]), k - 1, False))
    return [r[a:b] for a, b in zip([0, *cuts], [*cuts, r.shape[0]], strict=True)]


def test_hand_checked_two_by_two():
    # R = [[1, 1], [0, 1]]: du = (2, 1), di = (1, 2); R~ = [[1/sqrt2, 1/2], [0, 1/sqrt2]]
    r = sp.csr_matrix(np.array([[1.0, 1.0], [0.0, 1.0]]))
    g = np.array([[0.5, 0.5 / np.sqrt(2)], [0.5 / np.sqrt(2), 0.75]])
    f = filter_from_sums(*client_gram(r), s=0, wp=0.3)
    np.testing.assert_allclose(f, g, atol=1e-15)
    model = GFCF(2, 2, s=0).fit(r)
    np.testing.assert_allclose(model.score(torch.tensor([0, 1])).numpy(), r.toarray() @ g)


@pytest.mark.parametrize("s", [1, 5, 100])
def test_central_filter_matches_a_dense_numpy_reference(s):
    r = random_r()
    model = GFCF(40, 25, s=s, wp=0.3).fit(r)
    ref = dense_gfcf(r, s, 0.3)
    np.testing.assert_allclose(model.item_filter.numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(model.score(torch.arange(40)).numpy(), r.toarray() @ ref,
                               atol=1e-10)


def test_summed_client_item_cooccurrence_is_exact():
    r = random_r(seed=2)
    total = sum(b.T @ b for b in split_rows(r, 6))
    np.testing.assert_array_equal(total.toarray(), (r.T @ r).toarray())


@pytest.mark.parametrize("k", [1, 3, 10])
def test_exact_federated_gfcf_equals_central(k):
    r = random_r(users=60, items=30, seed=k)
    uploads = [client_gram(b) for b in split_rows(r, k, seed=k)]
    h_sum, deg = sum(h for h, _ in uploads), sum(d for _, d in uploads)
    fed = filter_from_sums(h_sum, deg, s=8, wp=0.3)
    central = GFCF(60, 30, s=8, wp=0.3).fit(r)
    np.testing.assert_allclose(fed, central.item_filter.numpy(), rtol=0, atol=1e-10)
    scores = np.vstack([b @ fed for b in split_rows(r, k, seed=k)])
    np.testing.assert_allclose(scores, central.score(torch.arange(60)).numpy(), atol=1e-10)


def test_client_scoring_with_the_server_filter():
    r = random_r()
    f = filter_from_sums(*client_gram(r), s=4, wp=0.3)
    block = r[10:20]
    model = GFCF(10, 25).fit(block, item_filter=f)
    np.testing.assert_allclose(model.score(torch.arange(10)).numpy(), block @ f, atol=1e-12)


def test_gsp_with_one_client_and_zero_agg_p_equals_local_gfcf():
    r = random_r(seed=4)
    f_local = local_filter(r, s=6, wp=0.3)
    np.testing.assert_allclose(f_local, GFCF(40, 25, s=6).fit(r).item_filter.numpy(), atol=1e-10)
    np.testing.assert_allclose(gsp_scores(r, f_local, np.mean([f_local], 0), 0.0),
                               r @ f_local, atol=1e-12)


def test_gsp_scores_blend_global_mean_and_local():
    blocks = split_rows(random_r(seed=5), 4)
    filters = [local_filter(b, s=4, wp=0.3) for b in blocks]
    f_mean = np.mean(filters, axis=0)
    out = gsp_scores(blocks[0], filters[0], f_mean, 60.0)
    np.testing.assert_allclose(out, blocks[0] @ (60.0 * f_mean + filters[0]), atol=1e-9)


def test_client_with_fewer_users_than_s_keeps_only_its_rank():
    r = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1.0]]))
    # rank 2 (rows 0 and 2 equal); s = 32 must not add null-space directions
    f = local_filter(r, s=32, wp=1.0)
    ref = dense_gfcf(r, 2, 1.0)
    np.testing.assert_allclose(f, ref, atol=1e-10)
    g, _ = client_gram(r)
    di = r.toarray().sum(0)
    inv = np.where(di > 0, 1 / np.sqrt(np.where(di > 0, di, 1)), 0)
    assert top_eigvecs(inv[:, None] * g * inv, 32).shape == (2, 6)
    assert np.all(f[:, 3:5] == 0) and np.all(f[3:5] == 0)  # unrated items stay zero


def test_top_eigvecs_are_orthonormal_sorted_and_sign_fixed():
    r = random_r(seed=6)
    h, d = client_gram(r)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    g = inv[:, None] * h * inv
    v = top_eigvecs(g, 5)
    np.testing.assert_allclose(v @ v.T, np.eye(5), atol=1e-12)
    vals = np.einsum("ij,jk,ik->i", v, g, v)
    assert np.all(np.diff(vals) <= 1e-12)
    assert np.all(v[np.arange(5), np.abs(v).argmax(1)] > 0)


def test_gfcf_state_is_only_the_filter_and_needs_fit():
    model = GFCF(4, 3)
    assert not model.trainable and set(model.shared_state()) == {"item_filter"}
    with pytest.raises(RuntimeError, match="fit"):
        model.score(torch.arange(2))


def test_top_eigh_lanczos_path_equals_lapack(monkeypatch):
    """The GIL-free Lanczos route (large n, few pairs) gives LAPACK's top eigenpairs."""
    import scipy.linalg

    from florec.models import gfcf

    monkeypatch.setattr(gfcf, "LANCZOS_MIN_N", 50)
    rng = np.random.default_rng(0)
    b = (rng.random((300, 120)) < 0.05).astype(float)
    sym = b @ b.T
    vals, vecs = gfcf.top_eigh(sym, 8)
    ref_vals, ref_vecs = scipy.linalg.eigh(sym, subset_by_index=[292, 299])
    np.testing.assert_allclose(vals, ref_vals[::-1], rtol=1e-10)
    np.testing.assert_allclose(vecs @ vecs.T, ref_vecs @ ref_vecs.T, atol=1e-8)
