"""FedCIA-MF clients trained batched equal each client's own MF and torch Adam, one by one.

Bit for bit on x86-64 with torch 2.13 (``bench/fedcia_batched_equal.py`` records it); stacking the
clients changes which elements fall in the vector kernels' tails, so the checks here allow float
rounding, 1e-5 of each array's largest entry (:func:`assert_close`), to hold on other builds.
"""

import json

import numpy as np
import pytest
import torch

from florec.client.trainers import private_batch
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.private_batch import fresh_states, train_mf_clients
from florec.client.trainers.private_model import (
    MODEL_KEY,
    OPT_KEY,
    build_node_model,
    fixed_triples,
    restore,
    state_arrays,
    train_one_by_one,
)
from florec.recdata.partition import partition_users
from florec.recdata.runconfig import parse_run_config
from florec.recdata.seeds import Salt, stream
from florec.recdata.store import get_split

CFG = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
       "synthetic-interactions": 8, "split": "ratio", "algorithm": "fedcia", "dim": 8,
       "lr": 0.1, "local-batch-size": 16}


def federation(n_clients: int, **changes):
    cfg = parse_run_config(CFG | changes)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    clients = [Bucket.from_split(split, u)
               for u in partition_users(split.n_users, num_nodes=n_clients)]
    return cfg, clients, [fixed_triples(c, cfg.seed, k) for k, c in enumerate(clients)]


def as_torch_state(state, client, cfg):
    """A state of either layout as a torch MF + Adam would save it (moments of every row)."""
    model = build_node_model(cfg, client, "mf", cfg.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    restore(model, optimizer, state)
    return state_arrays(model, optimizer)


def assert_close(got, want, name):
    """Equal up to float rounding: within 1e-5 of ``want``'s largest entry (exact if all 0)."""
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(initial=0.0),
                               err_msg=name)


def assert_states_equal(got, want, clients, cfg):
    """After expanding either layout to a torch Adam's (moments of every row)."""
    for g, w, client in zip(got, want, clients, strict=True):
        g, w = as_torch_state(g, client, cfg), as_torch_state(w, client, cfg)
        for group in (MODEL_KEY, OPT_KEY):
            assert g[group].keys() == w[group].keys()
            for key in g[group]:
                assert_close(g[group][key], w[group][key], f"{group}/{key}")


@pytest.mark.parametrize(("users", "rows"), [(40, None), (200, None), (200, [0, 1])])
def test_fresh_states_are_bit_identical_to_the_models_build_node_model_gives(users, rows):
    """Per-id draws (a small population, or 2 users of 200) and the cached population table."""
    cfg, clients, _ = federation(5, **{"synthetic-users": users})
    if rows is not None:
        clients = [clients[0].subset(np.array(rows))]
    for client, state in zip(clients, fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std),
                             strict=True):
        model = build_node_model(cfg, client, "mf", cfg.dim)
        for name, value in model.state_dict().items():
            assert np.array_equal(state[MODEL_KEY][name], value.numpy()), name
        assert state[OPT_KEY] == {}


@pytest.mark.parametrize("changes", [{}, {"reg": 0.01, "local-epochs": 2},
                                     {"local-batch-size": 7}])
def test_batched_clients_match_one_by_one_torch_adam_over_three_rounds(changes):
    """Clients with different numbers of batches (so they stop at different steps and, from
    round 2, sit at different Adam steps), state kept across rounds: tables, Adam moments,
    steps and losses (to float rounding), and each client's generator left exactly where
    ``local_epoch`` leaves it."""
    cfg, clients, triples = federation(6, **changes)
    assert len({-(-len(t[0]) // cfg.local_batch_size) for t in triples}) > 1
    got = want = fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std)
    for rnd in (1, 2, 3):
        rng_got = [stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, k) for k in range(len(clients))]
        rng_want = [stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, k) for k in range(len(clients))]
        args = (cfg.local_epochs, cfg.local_batch_size, cfg.lr, cfg.reg)
        got, loss_got = train_mf_clients(got, triples, rng_got, *args)
        want, loss_want = train_one_by_one(want, triples, rng_want, *args)
        assert_states_equal(got, want, clients, cfg)
        assert_close(loss_got, loss_want, "losses")
        assert [r.random() for r in rng_got] == [r.random() for r in rng_want]


def test_batched_training_continues_from_a_torch_adam_state():
    """A node store written by the one-by-one trainer (moments of every row) is read as is."""
    cfg, clients, triples = federation(4)
    states = fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std)
    rngs = [stream(cfg.seed, Salt.PRIVATE_ROUND, 1, k) for k in range(4)]
    torch_states, _ = train_one_by_one(states, triples, rngs, 1, cfg.local_batch_size, cfg.lr)
    args = (1, cfg.local_batch_size, cfg.lr)
    got, _ = train_mf_clients(torch_states, triples,
                              [stream(cfg.seed, Salt.PRIVATE_ROUND, 2, k) for k in range(4)], *args)
    want, _ = train_one_by_one(torch_states, triples,
                         [stream(cfg.seed, Salt.PRIVATE_ROUND, 2, k) for k in range(4)], *args)
    assert_states_equal(got, want, clients, cfg)


def test_item_moments_are_stored_for_the_rows_that_can_move_only():
    cfg, clients, triples = federation(3)
    states = fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std)
    new, _ = train_mf_clients(states, triples,
                              [stream(cfg.seed, Salt.PRIVATE_ROUND, 1, k) for k in range(3)],
                              1, cfg.local_batch_size, cfg.lr)
    for state, trip, old in zip(new, triples, states, strict=True):
        rows = state[OPT_KEY]["1.rows"]
        assert rows.tolist() == np.unique(np.concatenate(trip[1:])).tolist()
        assert state[OPT_KEY]["1.exp_avg"].shape == (len(rows), cfg.dim)
        assert state[OPT_KEY]["2.exp_avg_sq"].shape == (len(rows),)
        others = np.setdiff1d(np.arange(clients[0].n_items), rows)
        assert np.array_equal(state[MODEL_KEY]["item_emb"][others],
                              old[MODEL_KEY]["item_emb"][others])
        assert not np.array_equal(state[MODEL_KEY]["item_emb"][rows],
                                  old[MODEL_KEY]["item_emb"][rows])


def test_a_client_without_interactions_keeps_its_state_and_reports_zero_loss():
    cfg, clients, triples = federation(3)
    empty = tuple(t[:0] for t in triples[1])
    states = fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std)
    new, losses = train_mf_clients(states, [triples[0], empty, triples[2]],
                                   [stream(cfg.seed, Salt.PRIVATE_ROUND, 1, k) for k in range(3)],
                                   1, cfg.local_batch_size, cfg.lr)
    assert new[1] is states[1] and losses[1] == [0.0] and losses[0][0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"fedcia-comm": "factored", "fedcia-rank": 8}])
def test_a_fedcia_federation_ends_where_one_by_one_clients_end(tmp_path, monkeypatch, extra):
    """The whole round loop (train, upload, align, evaluate; 2 clients per node, 3 rounds) with
    the batched trainer and with the one-by-one reference in its place: same metrics and
    stored models (to float rounding)."""
    from florec.client import private_node
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    config = CFG | extra | {"num-nodes": 2, "clients-per-node": 2, "num-rounds": 3,
                            "align-steps": 3, "reg": 0.001}
    cfg = parse_run_config(config)
    runs = {}
    for name, trainer in (("batched", train_mf_clients), ("reference", train_one_by_one)):
        monkeypatch.setattr(private_node, "train_mf_clients", trainer)
        grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
        result = run_federated(grid, cfg, tmp_path / name)
        log = (tmp_path / name / "rounds.jsonl").read_text().splitlines()
        rounds = [json.loads(x) for x in log]
        assert len(rounds) == 3 and not any(r["dropped"] for r in rounds)
        stored = {pid: {key: rec for key, rec in ctx.state.array_records.items()
                        if key.endswith("-model")} for pid, ctx in grid.contexts.items()}
        runs[name] = result["metrics"], stored
    (m_got, s_got), (m_want, s_want) = runs["batched"], runs["reference"]
    for key, value in m_want.items():
        assert m_got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert s_got.keys() == s_want.keys()
    for pid in s_want:
        assert s_got[pid].keys() == s_want[pid].keys() and s_want[pid]
        for key in s_want[pid]:
            for name in ("user_emb", "item_emb", "item_bias"):
                assert_close(s_got[pid][key][name].numpy(), s_want[pid][key][name].numpy(),
                             f"{pid}/{key}/{name}")
    assert private_batch.train_mf_clients is train_mf_clients
