"""Federated FedAvg-MF with popularity-aware losses on an in-process grid (real handlers)."""

import numpy as np
import pytest
import torch
from flwr.app import MessageType

from florec.protocol.codec import from_record
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.fair import build_fair_strategy

CFG = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
       "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
       "split": "ratio-fs", "ks": "10,20", "selection-metric": "recall@20", "lr": 0.05,
       "local-batch-size": 16}


def run(tmp_path, **extra):
    cfg = parse_run_config(CFG | extra)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)  # default handlers include train.setup
    return grid, run_federated(grid, cfg, tmp_path / "out")


@pytest.mark.parametrize("loss", ["fs-point", "fs-pair", "ubpr", "wmf", "relmf", "du"])
def test_a_short_federated_run_with_each_loss_gives_finite_metrics(tmp_path, loss):
    grid, result = run(tmp_path, **{"mf-loss": loss})
    m = result["metrics"]
    assert m["num-users"] == 40
    assert all(np.isfinite(m[k]) for k in ("recall@20", "ndcg@20"))
    train_replies = [r for r in grid.received if r.metadata.message_type == MessageType.TRAIN]
    for reply in train_replies:  # the popularity is never uploaded (so never averaged)
        assert set(from_record(reply.content.array_records["arrays"])) == {"item_emb",
                                                                           "item_bias"}


@pytest.mark.parametrize("loss", ["fs-point", "fs-pair"])
def test_federated_evaluation_reports_arp(tmp_path, loss):
    _, result = run(tmp_path, **{"mf-loss": loss})
    assert np.isfinite(result["metrics"]["arp@20"]) and result["metrics"]["arp@20"] > 0


def test_node_arp_sums_pool_to_the_central_value():
    from florec.client.evaluation import bucket_metric_sums
    from florec.client.trainers.bucket import Bucket
    from florec.models.metrics import add_sums, evaluate_users, finalize
    from florec.recdata.store import get_split

    cfg = parse_run_config(CFG)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    pop = np.asarray(split.matrix("train").sum(0)).ravel()
    scores = torch.as_tensor(np.random.default_rng(0).random((split.n_users, split.n_items)))
    pooled = {}
    for users in np.array_split(np.arange(split.n_users), 3):
        sums = bucket_metric_sums(lambda u, users=users: scores[users][u],
                                  Bucket.from_split(split, users), cfg, 0, "cpu", item_pop=pop)
        sums.pop("partition-id")
        pooled = add_sums(pooled, {k[6:]: v for k, v in sums.items() if k.startswith("valid/")})
    central = finalize(evaluate_users(lambda u: scores[u], np.arange(split.n_users),
                                      split.mask_for("valid"), split.matrix("valid"), [10, 20],
                                      item_pop=pop))
    assert finalize(pooled)["arp@20"] == pytest.approx(central["arp@20"], rel=1e-12)


def test_item_bias_stays_zero_and_the_table_moves(tmp_path):
    from florec.strategies import fair

    seen = {}
    orig = fair.FairFedAvg.aggregate_train

    def spy(self, rnd, replies):
        new, metrics = orig(self, rnd, replies)
        seen[rnd] = from_record(new)
        return new, metrics

    fair.FairFedAvg.aggregate_train = spy
    try:
        run(tmp_path, **{"mf-loss": "fs-point"})
    finally:
        fair.FairFedAvg.aggregate_train = orig
    assert set(seen[2]) == {"item_emb", "item_bias", "item_pop", "n_users"}
    np.testing.assert_array_equal(seen[1]["item_pop"], seen[2]["item_pop"])
    assert np.all(seen[2]["item_bias"] == 0)
    assert not np.allclose(seen[1]["item_emb"], seen[2]["item_emb"])


def test_cpr_is_refused_federated_with_one_line():
    with pytest.raises(ConfigError, match="cpr.*fs-point"):
        build_fair_strategy(parse_run_config(CFG | {"mf-loss": "cpr"}), 60)


def test_fair_losses_take_sum_aggregation_and_the_server_optimizer(tmp_path):
    tuned = {"mf-loss": "fs-pair", "aggregation": "sum", "optimizer": "sgd", "lr": 0.03}
    strategy, _ = build_fair_strategy(parse_run_config(
        CFG | tuned | {"server-opt": "avgm", "server-lr": 0.5, "server-momentum": 0.5}), 60)
    assert (strategy.mode, strategy.server_opt.kind, strategy.server_opt.lr) == ("sum", "avgm", 0.5)
    _, plain = run(tmp_path / "plain", **tuned)
    _, avgm = run(tmp_path / "avgm", **tuned | {"server-opt": "avgm", "server-lr": 0.5,
                                                "server-momentum": 0.5})
    assert all(np.isfinite(r["metrics"]["recall@20"]) for r in (plain, avgm))
    assert plain["valid_metrics"] != avgm["valid_metrics"]  # the server step is applied


def test_fair_losses_refuse_kept_user_optimizer_state(tmp_path):
    with pytest.raises(ConfigError, match="keep-user-opt-state"):
        run(tmp_path, **{"mf-loss": "ubpr", "keep-user-opt-state": True})
