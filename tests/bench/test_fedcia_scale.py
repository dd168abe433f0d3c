"""bench/fedcia_scale.py and bench/fedcia_speed.py: the replayed server step, the authors' loop."""

from __future__ import annotations

import numpy as np
import torch


def uploads(n: int, nodes: int, width: int, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 8))
    return [((base @ rng.standard_normal((8, width)) + 0.01 * rng.standard_normal((n, width)))
             .astype(np.float32), 1.0) for _ in range(nodes)]


def test_the_replayed_server_step_streams_and_a_sketch_stays_near_the_exact_factor(
        bench_script) -> None:
    scale = bench_script("fedcia_scale")
    ups = uploads(400, 6, 16)
    exact = scale.server_step(400, ups, 4)
    assert exact["metrics"]["num-replies"] == 6 and "sketch-trace-kept" not in exact["metrics"]
    # the whole float64 stack (400 x 96) is the largest thing the server holds
    assert 400 * 96 * 8 / 2**20 < exact["peak_mb"] < 6 * 400 * 96 * 8 / 2**20
    sketch = scale.server_step(400, ups, 4, stack_mb=40 * 8 * 400 / 2**20)  # 40 columns
    assert sketch["metrics"]["sketch-trace-kept"] < 1.0
    assert sketch["peak_mb"] < exact["peak_mb"]
    a, b = (s["factor"].astype(np.float64) for s in (sketch, exact))
    assert np.linalg.norm(a @ a.T - b @ b.T) < 1e-3 * np.linalg.norm(b @ b.T)


def test_the_authors_triples_pair_a_positive_with_a_non_positive(bench_script) -> None:
    speed = bench_script("fedcia_speed")
    train = (np.random.default_rng(1).random((5, 30)) < 0.3).astype(np.int64)
    train[0, 0] = 1
    loader = speed.authors_triples(train, np.random.default_rng(0))
    users, pos, neg = (t.numpy() for t in loader.dataset.tensors)
    assert len(users) == train.sum()
    assert np.all(train[users, pos] == 1) and np.all(train[users, neg] == 0)
    model = speed.AuthorsMF(5, 30, 4, 0.0)
    u, p = model.embedding_user.weight[users], model.embedding_item.weight[pos]
    n = model.embedding_item.weight[neg]
    expected = 0.5 * (((u * p - 1) ** 2).mean() + ((u * n) ** 2).mean())  # element-wise quirk
    got = model.loss(*(torch.as_tensor(t) for t in (users, pos, neg)))
    torch.testing.assert_close(got, expected)
