"""FedCIA's server side: exact means, factored downlink, streaming memory, bad replies."""

import gc
import tracemalloc

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from florec.protocol.codec import to_record
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedcia import FedCIA, eigen_downlink, top_factor

N, D = 30, 4


def upload_handler(uploads):
    answers = iter(uploads)

    def handler(msg, ctx):
        arrays, weight = next(answers)
        return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(
            {"weight": weight, "train-loss": 0.5})}), reply_to=msg)

    return handler


def aggregate(strategy, uploads):
    grid = LocalGrid({}, len(uploads), handlers={MessageType.TRAIN: upload_handler(uploads)},
                     keep_replies=False)
    msgs = strategy.configure_train(1, None, ConfigRecord(), grid)
    return strategy.aggregate_train(1, (r for m in msgs for r in grid.send_and_receive([m])))


def tables(k, seed=0):
    rng = np.random.default_rng(seed)
    return [0.3 * rng.standard_normal((N, D)) for _ in range(k)]


def test_the_eigen_downlink_is_the_symmetric_part_in_an_orthonormal_basis(downlink_similarity):
    rng = np.random.default_rng(1)
    s_bar = rng.standard_normal((N, N))  # indefinite and not symmetric (a noisy mean can be)
    down = eigen_downlink(s_bar)
    assert down["basis"].dtype == down["eigvals"].dtype == np.float32
    q = down["basis"].astype(np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(N), atol=1e-5)
    np.testing.assert_allclose(downlink_similarity(down), (s_bar + s_bar.T) / 2, atol=1e-5)


@pytest.mark.parametrize("w", [np.array([1.0, 1.0, 1.0]), np.array([10.0, 20.0, 30.0])])
def test_dense_mean_is_the_weighted_mean_of_client_grams(w, downlink_similarity):
    """Nodes send weighted sums and their weight; the server divides by the total weight."""
    embs = tables(3)
    strategy = FedCIA(N, "dense")
    _, metrics = aggregate(strategy, [({"gram": wi * e @ e.T}, wi)
                                      for wi, e in zip(w, embs, strict=True)])
    expected = sum(wi * e @ e.T for wi, e in zip(w, embs, strict=True)) / w.sum()
    np.testing.assert_allclose(downlink_similarity(strategy.downlink), expected, atol=1e-5)
    assert metrics["num-replies"] == 3


def test_factored_uploads_give_the_dense_mean_and_a_full_rank_factor_reproduces_it():
    embs = tables(3)
    strategy = FedCIA(N, "factored", rank=N)
    _, metrics = aggregate(strategy, [({"factor": e}, 1) for e in embs])
    a = strategy.downlink["factor"].astype(np.float64)
    np.testing.assert_allclose(a @ a.T, sum(e @ e.T for e in embs) / 3, atol=1e-5)
    assert metrics["captured-energy"] == pytest.approx(1.0)


def test_top_factor_keeps_the_largest_eigenpairs():
    e = tables(1)[0]
    factor, energy = top_factor(e @ e.T, D)  # rank D exactly
    np.testing.assert_allclose(factor @ factor.T, e @ e.T, atol=1e-10)
    assert energy == pytest.approx(1.0)
    small, part = top_factor(e @ e.T, 1)
    assert small.shape == (N, 1) and 0 < part < 1


def test_bad_uploads_are_skipped(downlink_similarity):
    good = tables(1)[0]
    strategy = FedCIA(N, "dense")
    _, metrics = aggregate(strategy, [({"gram": good @ good.T}, 1),
                                      ({"gram": np.full((N, N), np.nan)}, 1),
                                      ({"gram": np.zeros((N, N + 1))}, 1)])
    assert metrics["num-replies"] == 1 and len(strategy.dropped) == 2
    np.testing.assert_allclose(downlink_similarity(strategy.downlink), good @ good.T, atol=1e-5)


def test_server_memory_does_not_grow_with_the_number_of_clients():
    """One n x n accumulator: peak memory with 200 clients is about that with 20.

    Flower's ``RecordDict`` holds reference cycles, so a folded reply's bytes are freed when
    Python's cycle collector runs, at a time set by allocation counts, not when FloRec lets go
    of the reply. The replies are therefore fed with a collection before every tenth: the
    peak then measures what the strategy itself keeps.
    """
    n = 200
    gram = {"gram": np.ones((n, n), np.float32)}

    def collected(replies):
        for i, reply in enumerate(replies):
            if i % 10 == 0:  # at most 10 folded replies wait for the collector
                gc.collect()
            yield reply

    def peak(clients):
        strategy = FedCIA(n, "dense")
        grid = LocalGrid({}, clients, handlers={MessageType.TRAIN: upload_handler(
            [(gram, 1)] * clients)}, keep_replies=False)
        msgs = strategy.configure_train(1, None, ConfigRecord(), grid)
        tracemalloc.start()
        strategy.aggregate_train(1, collected(r for m in msgs for r in grid.send_and_receive([m])))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(20), peak(200)
    assert large < 1.5 * small, (small, large)


def test_federated_gfcf_hands_its_filter_to_a_checkpoint_and_back():
    from florec.strategies.gfcf import FederatedGFCF

    built = FederatedGFCF(5)
    assert built.state_arrays() == {}
    built.filter = np.arange(25.0).reshape(5, 5)
    restored = FederatedGFCF(5)
    restored.load_state_arrays(built.state_arrays())
    np.testing.assert_array_equal(restored.filter, built.filter)


def federated_run(tmp_path, **extra):
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated

    config = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
              "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 3,
              "algorithm": "fedcia", "align-steps": 10, "lr": 0.05} | extra
    cfg = parse_run_config(config)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False)
    return run_federated(grid, cfg, tmp_path)


def test_a_whole_factored_run_with_rank_n_equals_the_dense_run(tmp_path):
    """Three rounds of train + align: factored r = n and dense give the same model and metrics."""
    dense = federated_run(tmp_path / "dense", **{"fedcia-comm": "dense"})
    factored = federated_run(tmp_path / "factored", **{"fedcia-comm": "factored",
                                                       "fedcia-rank": 60})
    assert factored["bytes_up"] < dense["bytes_up"]  # it really ran the factored protocol
    assert dense["rounds"] == factored["rounds"] == 3
    keys = {k for k in dense["metrics"] if "@" in k}
    assert {"recall@10", "ndcg@10"} <= keys
    for key in sorted(keys):
        assert factored["metrics"][key] == pytest.approx(dense["metrics"][key], abs=1e-4), key
    for key in dense["valid_metrics"]:
        assert factored["valid_metrics"][key] == pytest.approx(dense["valid_metrics"][key],
                                                               abs=1e-4), key


def test_factor_stack_compresses_past_n_columns_without_changing_the_sum():
    """12 uploads of width 4 exceed n = 30 columns; the stack stays exact and at most n wide."""
    from florec.strategies.fedcia_stack import FactorStack

    embs = tables(12, seed=3)
    stack = FactorStack(N)
    for e in embs:
        stack.add(e)
        assert stack.cols <= N + D
    b = stack.stacked()
    assert b.shape[1] <= N + D
    np.testing.assert_allclose(b @ b.T, sum(e @ e.T for e in embs), atol=1e-10)
    factor, energy = stack.top_factor(N, 1 / 12)
    np.testing.assert_allclose(factor @ factor.T, sum(e @ e.T for e in embs) / 12, atol=1e-10)
    assert energy == pytest.approx(1.0)


def test_factored_rank_r_downlink_equals_the_top_eigenpairs_of_the_dense_mean():
    """The server's small-Gram route gives the same rank-r factor as eigh of the n x n mean."""
    embs = tables(3, seed=5)
    strategy = FedCIA(N, "factored", rank=3)
    _, metrics = aggregate(strategy, [({"factor": e}, 1) for e in embs])
    expected, energy = top_factor(sum(e @ e.T for e in embs) / 3, 3)
    a = strategy.downlink["factor"].astype(np.float64)
    np.testing.assert_allclose(a @ a.T, expected @ expected.T, atol=1e-5)
    assert metrics["captured-energy"] == pytest.approx(energy, rel=1e-6)


def shared_structure_tables(k, n, d, seed=0, noise=0.05):
    """Client tables that share a rank-d structure (as aligned FedCIA clients do) plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d))
    return [base @ rng.standard_normal((d, d)) / d**0.5 + noise * rng.standard_normal((n, d))
            for _ in range(k)]


def test_a_sketched_stack_keeps_the_top_subspace_of_the_exact_sum():
    """Past its memory budget the stack truncates; its rank-r factor matches the exact one."""
    from florec.strategies.fedcia_stack import FactorStack

    n, d, rank = 300, 6, 4
    embs = shared_structure_tables(20, n, d)
    exact = FactorStack(n, budget_mb=float("inf"))
    sketch = FactorStack(n, budget_mb=24 * 8 * n / 2**20, min_width=rank)  # 24 columns fit
    assert not exact.sketched and sketch.sketched and (sketch.limit, sketch.width) == (24, 12)
    for e in embs:
        exact.add(e)
        sketch.add(e)
        assert sketch.cols <= sketch.limit
    assert 0.99 < sketch.trace_kept < 1.0  # it dropped something, and only the noise tail
    a_exact, _ = exact.top_factor(rank, 1 / 20)
    a_sketch, _ = sketch.top_factor(rank, 1 / 20)
    s_exact, s_sketch = a_exact @ a_exact.T, a_sketch @ a_sketch.T
    assert np.linalg.norm(s_sketch - s_exact) < 1e-3 * np.linalg.norm(s_exact)
    # truncation only removes positive semi-definite parts: the sketch sits below the sum
    full = sum(e @ e.T for e in embs)
    b = sketch.stacked().astype(np.float64)
    assert sketch.dtype == np.float32  # a sketch stores float32, as uploaded
    assert np.linalg.eigvalsh(full - b @ b.T).min() > -1e-6 * np.linalg.norm(full)


def test_a_sketched_server_reports_the_trace_it_kept():
    n = 200
    embs = shared_structure_tables(6, n, 4, seed=2)
    strategy = FedCIA(n, "factored", rank=3, stack_mb=10 * 8 * n / 2**20)  # 10 columns
    _, metrics = aggregate(strategy, [({"factor": e}, 1) for e in embs])
    assert 0.99 < metrics["sketch-trace-kept"] < 1.0
    assert strategy.downlink["factor"].shape == (n, 3)
    exact = FedCIA(n, "factored", rank=3)
    _, plain = aggregate(exact, [({"factor": e}, 1) for e in embs])
    assert "sketch-trace-kept" not in plain
    a, b = (s.downlink["factor"].astype(np.float64) for s in (strategy, exact))
    assert np.linalg.norm(a @ a.T - b @ b.T) < 1e-3 * np.linalg.norm(b @ b.T)


def test_a_rank_that_does_not_fit_the_stack_budget_is_refused():
    from florec.recdata.errors import ConfigError

    with pytest.raises(ConfigError, match="lower fedcia-rank"):  # 1 MiB: 131 columns, keeps 65
        FedCIA(1000, "factored", rank=66, stack_mb=1.0)
    FedCIA(1000, "factored", rank=65, stack_mb=1.0)


def test_dense_mode_refuses_a_book_crossing_sized_catalogue():
    from florec.recdata.errors import ConfigError

    with pytest.raises(ConfigError, match="fedcia-comm='factored'"):
        FedCIA(19_997, "dense")
    FedCIA(19_997, "factored")  # factored mode takes it
