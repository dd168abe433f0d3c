"""Sequential FedAvg nodes: in-process federated runs, Adam state, payloads, evaluation."""

import json

import numpy as np
import pytest

from florec.client.seq_node import OPT_KEY
from florec.protocol.codec import from_record
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 50,
         "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 2,
         "model": "sasrec", "max-seq-len": 12, "oracle-future": 3, "seq-layers": 1,
         "lr": 0.01, "local-batch-size": 64, "device": "cpu"}


def run(tmp_path, extra, num_nodes=None):
    cfg = parse_run_config(SMALL | extra)
    grid = LocalGrid(cfg.to_flower(), num_nodes or cfg.num_nodes)
    return grid, run_federated(grid, cfg, tmp_path / "out")


@pytest.mark.parametrize("extra", [{}, {"oracle": True}, {"model": "gru4rec", "oracle": True},
                                   {"model": "gru4rec", "seq-loss": "bpr"}])
def test_federated_run_yields_finite_metrics(tmp_path, extra):
    _, result = run(tmp_path, extra)
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["train"]["num-replies"] == 4 and r["bytes_up"] > 0 for r in rows)
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert np.isfinite(result["metrics"][key]) and 0 <= result["metrics"][key] <= 1
    assert result["metrics"]["num-users"] == 40


def test_nodes_keep_their_adam_state_and_upload_no_optimizer_state(tmp_path):
    grid, _ = run(tmp_path, {"oracle": True})
    for ctx in grid.contexts.values():
        saved = from_record(ctx.state.array_records[OPT_KEY])
        assert {k.split(".")[0] for k in saved} == {"opt0", "opt1"}
        assert max(v.max() for k, v in saved.items() if k.endswith(".step")) > 1
    for msg in grid.received:
        for record in msg.content.array_records.values():
            assert not any(k.startswith("opt") for k in record)


def test_a_node_weight_is_its_number_of_training_positions(tmp_path):
    grid, _ = run(tmp_path, {})
    from florec.client.seq_node import node_sequences

    cfg = parse_run_config(SMALL)
    total = 0
    for ctx in grid.contexts.values():  # each node's shard holds only its own users' sequences
        seqs = node_sequences(ctx, cfg)
        total += int(np.minimum(seqs.train_lengths(np.arange(40)), cfg.max_seq_len).sum())
    rows = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert rows[0]["train"]["num-positions"] == total


def test_item_weighted_nodes_send_the_item_counts_of_their_training_windows(tmp_path):
    from florec.client.seq_node import node_sequences
    from florec.protocol.item_counts import COUNTS_RECORD, item_counts

    grid, result = run(tmp_path, {"aggregation": "item-weighted"})
    cfg = parse_run_config(SMALL)
    want = {}
    for ctx in grid.contexts.values():
        seqs = node_sequences(ctx, cfg)
        windows = seqs.inputs(np.arange(40), "train", cfg.max_seq_len)
        want[int(ctx.node_config["partition-id"])] = item_counts(windows, 50)
    replies = [m for m in grid.received if COUNTS_RECORD in m.content.array_records]
    assert len(replies) == 2 * 4  # every training reply of both rounds
    for msg in replies:
        pid = int(msg.content.metric_records["metrics"]["partition-id"])
        counts = from_record(msg.content.array_records[COUNTS_RECORD])["counts"]
        np.testing.assert_array_equal(counts, want[pid])
    assert np.isfinite(result["metrics"]["ndcg@10"])


def test_one_user_per_node_is_cross_device_fedavg(tmp_path):
    _, result = run(tmp_path, {"users-per-node": 1, "num-rounds": 1, "synthetic-users": 8},
                    num_nodes=8)
    assert result["metrics"]["num-users"] == 8


def test_federated_evaluation_equals_central_evaluation_of_the_global_model(tmp_path):
    """Pooled node sums equal one central evaluation of the same global arrays."""
    from florec.client.trainers.sequential import sequence_metric_sums
    from florec.models.metrics import finalize
    from florec.models.registry import sequential_from_config
    from florec.recdata.sequences import UserSequences
    from florec.recdata.store import get_split

    cfg = parse_run_config(SMALL | {"oracle": True, "num-rounds": 1})
    grid, result = run(tmp_path, {"oracle": True, "num-rounds": 1})
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, "", cfg.min_rating,
                         cfg.synthetic_params())
    evaluate_msg = [m for m in grid.received if "test/num-users" in m.content.metric_records.get(
        "metrics", {})]
    assert len(evaluate_msg) == 4
    model = sequential_from_config(cfg, split.n_items)
    # the global state after round 1 is what the evaluate messages carried: rebuild it from
    # the train replies (position-weighted mean)
    train = [m for m in grid.received if "num-positions" in m.content.metric_records.get(
        "metrics", {})]
    w = np.array([m.content.metric_records["metrics"]["num-positions"] for m in train], float)
    arrays = [from_record(m.content.array_records["arrays"]) for m in train]
    pairs = list(zip(w, arrays, strict=True))
    model.load_shared_state({k: (sum(wi * a[k].astype(np.float64) for wi, a in pairs)
                                 / w.sum()).astype(np.float32) for k in arrays[0]})
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    sums = sequence_metric_sums(
        model, {p: seqs.inputs(users, p, cfg.max_seq_len) for p in ("valid", "test")},
        {p: split.mask_for(p) for p in ("valid", "test")},
        {p: split.matrix(p) for p in ("valid", "test")}, cfg.k_list)
    central = finalize({k[5:]: v for k, v in sums.items() if k.startswith("test/")})
    for key in ("hr@10", "ndcg@10", "mrr@10"):
        assert result["metrics"][key] == pytest.approx(central[key], abs=1e-6)
