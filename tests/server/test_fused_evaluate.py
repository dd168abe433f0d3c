"""fused-evaluate: round r's train message carries round r-1's evaluation, results unchanged."""

import json

import numpy as np
import pytest
from flwr.app import MessageType

from florec.client import fedavg_node
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.server.fused import check_fused, defers
from florec.sim.local_grid import LocalGrid

TOL = 1e-9


def run_both(tmp_path, config, **grid_options):
    """The same run with separate messages and fused; (rows, results, grid) of each."""
    out = {}
    for fused in (False, True):
        cfg = parse_run_config(config | {"fused-evaluate": fused})
        grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, **grid_options)
        folder = tmp_path / ("fused" if fused else "separate")
        run_federated(grid, cfg, folder)
        rows = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
        results = json.loads((folder / "results.json").read_text())["runs"][0]
        out[fused] = (rows, results, grid, folder)
    return out[False], out[True]


def assert_same_npz(a_path, b_path) -> None:
    with np.load(a_path) as a, np.load(b_path) as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            if a[key].dtype.kind in "fc":
                np.testing.assert_allclose(a[key], b[key], atol=TOL, err_msg=key)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=TOL, nan_ok=True), key


@pytest.mark.parametrize("extra", [
    {"eval-every": 1, "checkpoint-every": 3, "aggregation": "dense"},
    {"eval-every": 2, "aggregation": "sparse"},
    {"eval-every": 1, "aggregation": "sum", "keep-user-opt-state": True, "server-opt": "adam"},
    {"eval-every": 2, "aggregation": "sparse", "attack": "bandwagon", "attack-fraction": 0.1,
     "attack-targets": "3,5", "defense": "median"},
], ids=["every-round-checkpoint-3", "every-2-sparse", "sum-adam", "attack-median"])
def test_fused_run_records_what_a_separate_run_records(tmp_path, small_config, extra):
    config = small_config | {"num-nodes": 3, "num-rounds": 5, "lr": 0.1} | extra
    (rows_s, res_s, grid_s, dir_s), (rows_f, res_f, grid_f, dir_f) = run_both(tmp_path, config)
    assert [r["round"] for r in rows_f] == [r["round"] for r in rows_s] == [1, 2, 3, 4, 5]
    for a, b in zip(rows_s, rows_f, strict=True):
        assert ("valid" in a) == ("valid" in b)
        if "valid" in a:
            assert_close(a["valid"], b["valid"])
            assert a["coverage"] == b["coverage"] and a["comparable"] == b["comparable"]
        assert_close(a["train"], b["train"])
    assert res_f["best_round"] == res_s["best_round"] and res_f["rounds"] == res_s["rounds"]
    assert_close(res_s["metrics"], res_f["metrics"])
    assert_close(res_s["valid_metrics"], res_f["valid_metrics"])
    evaluations = [r["round"] for r in rows_s if "valid" in r]
    plain = [r for r in evaluations if not defers(parse_run_config(config | {
        "fused-evaluate": True}), r)]
    assert grid_s.pushed[MessageType.EVALUATE] == 3 * len(evaluations)
    assert grid_f.pushed[MessageType.EVALUATE] == 3 * len(plain) < 3 * len(evaluations)
    assert grid_f.pushed[MessageType.TRAIN] == grid_s.pushed[MessageType.TRAIN]
    if config.get("checkpoint-every"):  # round 3's checkpoint: same state, same node stores
        for name in ("global.npz", "strategy.npz"):
            assert_same_npz(dir_s / "checkpoint" / "round-000003" / name,
                            dir_f / "checkpoint" / "round-000003" / name)
        saved = [json.loads((d / "checkpoint" / "round-000003" / "state.json").read_text())
                 for d in (dir_s, dir_f)]
        for key in ("round", "best_score", "since_best"):
            assert saved[0][key] == pytest.approx(saved[1][key], abs=TOL)
        assert saved[0]["run"]["best_round"] == saved[1]["run"]["best_round"]
        parts = sorted((dir_s / "checkpoint" / "nodes" / "round-000003").glob("*.npz"))
        assert len(parts) == 3
        for part in parts:
            assert_same_npz(part, dir_f / part.relative_to(dir_s))


def test_an_early_stop_lags_one_round_and_keeps_the_selected_round(tmp_path, small_config):
    config = small_config | {"num-nodes": 3, "num-rounds": 8, "lr": 0.5, "patience": 1}
    (rows_s, res_s, _, _), (rows_f, res_f, grid_f, _) = run_both(tmp_path, config)
    stop = res_s["rounds"]
    assert stop < 8, "the separate run must stop early for this test to mean anything"
    assert res_f["rounds"] == stop + 1  # the stop is known after the next round's training
    assert res_f["best_round"] == res_s["best_round"]
    assert_close(res_s["metrics"], res_f["metrics"])
    for a, b in zip(rows_s, rows_f[:stop], strict=True):
        assert_close(a["valid"], b["valid"])
    extra = rows_f[stop]
    assert extra["round"] == stop + 1 and extra["after_stop"] is True
    assert extra["valid"]["num-users"] == 40  # the final state, evaluated plainly
    assert "comparable" not in extra
    assert grid_f.pushed[MessageType.EVALUATE] == 3  # only that plain evaluation


def test_sequential_fedavg_fused_equals_separate(tmp_path, small_config):
    config = small_config | {"model": "gru4rec", "num-nodes": 2, "num-rounds": 3, "dim": 8,
                             "max-seq-len": 8, "seq-layers": 1}
    (rows_s, res_s, _, _), (rows_f, res_f, grid_f, _) = run_both(tmp_path, config)
    for a, b in zip(rows_s, rows_f, strict=True):
        assert_close(a["valid"], b["valid"])
    assert res_f["best_round"] == res_s["best_round"]
    assert_close(res_s["metrics"], res_f["metrics"])
    assert grid_f.pushed[MessageType.EVALUATE] == 2  # the last round's


@pytest.mark.parametrize("extra, named", [
    ({"algorithm": "fedcia"}, "algorithm 'fedcia'"),
    ({"algorithm": "local"}, "algorithm 'local'"),
    ({"model": "cotrec"}, "model 'cotrec'"),
    ({"model": "llkd"}, "model 'llkd'"),
    ({"model": "llmd4rec"}, "model 'llmd4rec'"),
    ({"model": "agentcf"}, "model 'agentcf'"),
    ({"mf-loss": "ubpr"}, "mf-loss 'ubpr'"),
    ({"fraction-train": 0.5}, "fraction-train=1"),
    ({"cohort-fraction": 0.5}, "cohort-fraction=1"),
    ({"cohort-size": 10}, "cohort-size=0"),
    ({"dp": True}, "dp=false"),
    ({"secagg": True}, "secagg=false"),
])
def test_unsupported_combinations_are_refused_in_one_line(small_config, extra, named):
    cfg = parse_run_config(small_config | {"fused-evaluate": True} | extra)
    with pytest.raises(ConfigError) as err:
        check_fused(cfg)
    message = str(err.value)
    assert named in message and "fused-evaluate=false" in message and "\n" not in message
    check_fused(parse_run_config(small_config | extra))  # without fused-evaluate: no refusal


def test_the_server_refuses_before_any_round(tmp_path, small_config):
    cfg = parse_run_config(small_config | {"fused-evaluate": True, "fraction-train": 0.5})
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes)
    with pytest.raises(ConfigError, match="fraction-train=1"):
        run_federated(grid, cfg, tmp_path / "out")
    assert grid.pushed == {}


def test_last_and_checkpoint_rounds_are_evaluated_at_once(small_config):
    cfg = parse_run_config(small_config | {"fused-evaluate": True, "num-rounds": 6,
                                           "checkpoint-every": 4})
    assert [r for r in range(1, 7) if defers(cfg, r)] == [1, 2, 3, 5]
    assert not any(defers(parse_run_config(small_config | {"num-rounds": 6}), r)
                   for r in range(1, 7))


def assert_same_run(separate, fused) -> None:
    """Rows (metrics, coverage, comparable, dropped), best round and its metrics are equal."""
    (rows_s, res_s, _, _), (rows_f, res_f, _, _) = separate, fused
    assert [r["round"] for r in rows_f] == [r["round"] for r in rows_s]
    for a, b in zip(rows_s, rows_f, strict=True):
        assert_close(a["valid"], b["valid"])
        assert a["coverage"] == b["coverage"], a["round"]
        assert a["comparable"] == b["comparable"], a["round"]
        assert a["dropped"] == b["dropped"], a["round"]
    assert res_f["best_round"] == res_s["best_round"]
    assert_close(res_s["metrics"], res_f["metrics"])
    assert res_s["coverage"] == res_f["coverage"]


def failing_on_partition(handler, partition):
    def fail(msg, context, cfg, bucket, pid, device):
        if pid == partition:
            raise RuntimeError(f"injected failure in partition {pid}'s {handler.__name__}")
        return handler(msg, context, cfg, bucket, pid, device)
    return fail


FAILING = {"num-nodes": 3, "num-rounds": 3, "lr": 0.1}


def test_a_node_whose_training_fails_keeps_its_evaluation(tmp_path, small_config, monkeypatch):
    monkeypatch.setattr(fedavg_node, "train", failing_on_partition(fedavg_node.train, 1))
    separate, fused = run_both(tmp_path, small_config | FAILING)
    assert_same_run(separate, fused)
    rows_f = fused[0]
    assert all(r["coverage"]["complete"] for r in rows_f)  # evaluated although it failed
    # once, in its training's round
    assert [r["dropped"] for r in rows_f] == [["node 2 (partition 1)"]] * 3
    assert fused[2].pushed[MessageType.EVALUATE] == 3  # the last round's only


def test_a_node_whose_evaluation_fails_is_dropped_in_the_evaluated_round(tmp_path, small_config,
                                                                           monkeypatch):
    monkeypatch.setattr(fedavg_node, "evaluate", failing_on_partition(fedavg_node.evaluate, 1))
    separate, fused = run_both(tmp_path, small_config | FAILING)
    assert_same_run(separate, fused)
    rows_f = fused[0]
    assert [r["coverage"]["missing_partitions"] for r in rows_f] == [[1]] * 3
    # not in the next round's row
    assert [r["dropped"] for r in rows_f] == [["node 2 (partition 1)"]] * 3
    assert all(r["train"]["num-replies"] == 3 for r in rows_f)  # its training still counts


def test_a_node_that_timed_out_is_not_evaluated_as_in_a_separate_run(tmp_path, small_config):
    def lost(msg):  # node 2 trains round 1, but its reply never arrives
        config = msg.content.config_records["config"]
        return (msg.metadata.dst_node_id == 2 and msg.metadata.message_type == MessageType.TRAIN
                and int(config["server-round"]) == 1)

    separate, fused = run_both(tmp_path, small_config | FAILING | {"round-timeout-s": 1.0},
                               lose=lost)
    assert_same_run(separate, fused)
    rows_f = fused[0]
    assert rows_f[0]["coverage"]["missing_partitions"] == [1]  # its round-2 reply evaluated it
    assert [r["dropped"] for r in rows_f] == [["node 2 (partition 1)"], [], []]


def test_a_node_whose_fused_message_fails_is_missing_from_that_evaluation(tmp_path,
                                                                          small_config):
    config = small_config | FAILING
    separate, fused = run_both(tmp_path, config, fail=lambda pid, kind: pid == 1
                               and kind == MessageType.TRAIN)
    rows_s, rows_f = separate[0], fused[0]
    for row in rows_f[:2]:  # carried by rounds 2 and 3, whose train message node 1 failed
        assert row["coverage"]["missing_partitions"] == [1] and row["comparable"] is True
    assert rows_f[2]["coverage"]["complete"]  # the last round's plain evaluate reaches node 1
    assert rows_f[2]["comparable"] is True  # more users: it replaces the best round whatever
    # listed once, in the row of the round whose training it failed, as a separate run lists it
    dropped = [["node 2 (partition 1)"]] * 3
    assert [r["dropped"] for r in rows_f] == [r["dropped"] for r in rows_s] == dropped
    assert all(r["coverage"]["complete"] for r in rows_s)  # the difference the docs state


def test_a_resumed_fused_run_ends_as_an_uninterrupted_one(tmp_path, small_config):
    # checkpoints at rounds 2 and 4 are evaluated at once, so none holds a pending round
    config = small_config | {"fused-evaluate": True, "num-rounds": 6, "checkpoint-every": 2,
                             "lr": 0.1}

    def run(out, **changes):
        cfg = parse_run_config(config | changes | {"out-dir": str(out)})
        return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, out)

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", **{"num-rounds": 3})  # round 3 ends the cut run: evaluated plainly
    resumed = run(tmp_path / "cut", resume=True)  # from round 2's checkpoint
    assert resumed["rounds"] == 6 and resumed["best_round"] == whole["best_round"]
    assert_close(whole["metrics"], resumed["metrics"])
    rows = [[json.loads(x) for x in (tmp_path / d / "rounds.jsonl").read_text().splitlines()]
            for d in ("whole", "cut")]
    assert [r["round"] for r in rows[1]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(*rows, strict=True):
        assert_close(a["valid"], b["valid"])
