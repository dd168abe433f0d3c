"""bench/attack_trim_probe.py: the counterfactual sum is what the plain strategy returns on the
same replies and server-optimiser state, and probing leaves the trimmed-mean run unchanged;
bench/attack_trim_rows.py: its row helpers; bench/attack_trim_analysis.py: its probed users;
bench/attack_trim_report.py: its tables."""

import copy

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from florec.protocol.codec import from_record, to_record
from florec.protocol.fedavg_upload import node_payload
from florec.protocol.user_rows import user_rows_payload
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.robust import RobustFedAvgRec
from florec.strategies.server_opt import ServerOptimizer

N, D = 15, 4
TARGETS = np.array([3, 11])


@pytest.fixture(autouse=True)
def _run_ids():
    from florec.sim.local_grid import LocalGrid

    LocalGrid({}, 1, handlers={})  # the run/task ids a Flower process would set (Message needs)


def _reply(arrays, weight):
    content = RecordDict({"arrays": to_record(arrays),
                          "metrics": MetricRecord({"weight": weight, "num-users": 1.0,
                                                   "num-pairs": 1.0, "loss-sum": 0.5})})
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


def _uploads(seed=0, nodes=3, users=6):
    """Per-user and pre-summed replies of the same rows; the last user of node 0 attacks."""
    rng = np.random.default_rng(seed)
    per_user, summed = [], []
    for node in range(nodes):
        parts = [rng.choice(np.setdiff1d(np.arange(N), TARGETS), 5, replace=False)
                 for _ in range(users)]
        parts = [np.union1d(p, TARGETS[rng.random(2) < 0.5]) for p in parts]
        if node == 0:
            parts[-1] = TARGETS
        row_user = np.concatenate([np.full(len(p), u) for u, p in enumerate(parts)])
        row_item = np.concatenate(parts)
        delta = rng.normal(0, 0.1, (len(row_item), D)).astype(np.float32)
        bias = rng.normal(0, 0.1, len(row_item)).astype(np.float32)
        if node == 0:
            delta[row_user == users - 1] += 2.0
        w = np.ones(users)
        per_user.append(_reply(*user_rows_payload(row_user, row_item, delta, bias, w)))
        summed.append(_reply(*node_payload("sparse", N, row_user, row_item, delta, bias, w)))
    return per_user, summed


def _start(strategy):
    rng = np.random.default_rng(7)
    strategy.current = {"item_emb": rng.normal(size=(N, D)).astype(np.float32),
                        "item_bias": rng.normal(size=N).astype(np.float32)}
    strategy.server_opt.m = {"item_emb": rng.normal(0, 0.1, (N, D)),
                             "item_bias": rng.normal(0, 0.1, N)}  # a round-2 momentum
    return strategy


def _opt():
    return ServerOptimizer("avgm", 1.0, 0.5)


def test_the_counterfactual_sum_equals_the_plain_strategy_on_the_same_replies(bench_script):
    probe = bench_script("attack_trim_probe")
    per_user, summed = _uploads()
    plain = _start(FedAvgRec("sum", server_opt=_opt()))
    want, _ = plain.aggregate_train(2, summed)
    robust = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    moments = copy.deepcopy(robust.server_opt.m)
    got, _, delta = probe.apply_rule(robust, 2, per_user, "none", counterfactual=True)
    want, got = from_record(want), from_record(got)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    # the recorded delta is the row sum, and the strategy's moments were left as they were
    sums = np.zeros((N, D))
    for msg in per_user:
        up = from_record(msg.content.array_records["arrays"])
        np.add.at(sums, up["items"], up["item_emb"])
    np.testing.assert_allclose(delta["item_emb"], sums, rtol=1e-6, atol=1e-6)
    for key in moments:
        np.testing.assert_array_equal(robust.server_opt.m[key], moments[key])


def test_probing_leaves_the_trimmed_mean_run_unchanged(bench_script):
    probe = bench_script("attack_trim_probe")
    per_user, _ = _uploads(seed=1)
    ref = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    want, _ = ref.aggregate_train(2, per_user)
    probed = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    probed.__class__ = probe.TrimProbe  # probe=None: the sum is computed, nothing logged
    got, _ = probed.aggregate_train(2, per_user)
    want, got = from_record(want), from_record(got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_array_equal(probed.server_opt.m[key], ref.server_opt.m[key])
    assert probed.bytes_up == ref.bytes_up


class _Capture:
    """A probe stub that keeps each round's tables under both rules."""

    def __init__(self):
        self.tables = {}

    def load_stored(self, node_users):
        pass

    def record(self, server_round, rows, current, tables, deltas):
        self.tables[server_round] = tables


def test_the_counterfactual_starts_from_the_server_optimiser_before_the_followed_step(
        bench_script):
    # the rule not followed must run first, on a copy of the optimiser: run after the followed
    # rule it would see the momentum that rule just updated
    probe = bench_script("attack_trim_probe")
    probed = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    probed.__class__, probed.probe = probe.TrimProbe, _Capture()
    ref = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    for rnd, seed in ((1, 3), (2, 4)):
        per_user, summed = _uploads(seed=seed)
        before = {k: v.copy() for k, v in ref.current.items()}
        plain = FedAvgRec("sum", server_opt=copy.deepcopy(ref.server_opt))
        plain.current = dict(before)
        want = from_record(plain.aggregate_train(rnd, summed)[0])
        ref.aggregate_train(rnd, per_user)  # the trimmed-mean run's own step
        probed.aggregate_train(rnd, per_user)
        got = probed.probe.tables[rnd]["sum"]
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
        # the order matters here: the sum on the optimiser after the trimmed step differs
        flipped = FedAvgRec("sum", server_opt=copy.deepcopy(ref.server_opt))
        flipped.current = dict(before)
        wrong = from_record(flipped.aggregate_train(rnd, summed)[0])
        assert np.abs(wrong["item_emb"] - want["item_emb"]).max() > 1e-2


def test_attacker_rows_are_the_users_uploading_targets_only(bench_script):
    probe = bench_script("attack_trim_rows")
    per_user, _ = _uploads()
    rows = probe.user_rows(per_user)
    bad = probe.attacker_rows(rows, TARGETS)
    assert set(rows["items"][bad].tolist()) == set(TARGETS.tolist())
    assert len(np.unique(rows["users"][bad])) == 1  # the one attacker of node 0
    assert bad.sum() == len(TARGETS)


def test_kept_share_counts_the_attacker_values_a_trimmed_mean_keeps(bench_script):
    probe = bench_script("attack_trim_rows")
    values = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, -9.0], [9.0, 7.0], [9.0, 8.0]])
    bad = np.array([False, False, False, True, True])
    # k=1 cuts one value from each end per column: one of the two 9s in column 0, the 8 in
    # column 1 -> 2 of the attackers' 4 values cut
    assert probe.kept_share(values, bad, 1) == pytest.approx(0.5)
    assert probe.kept_share(values, bad, 0) == 1.0
    assert probe.kept_share(values, np.zeros(5, bool), 1) is None


def test_following_the_sum_continues_as_the_undefended_strategy(bench_script):
    probe = bench_script("attack_trim_probe")
    per_user, summed = _uploads(seed=2)
    plain = _start(FedAvgRec("sum", server_opt=_opt()))
    want, _ = plain.aggregate_train(2, summed)
    probed = _start(RobustFedAvgRec("trimmed-mean", trim=0.2, mode="sum", server_opt=_opt()))
    probed.__class__ = probe.TrimProbe
    probed.follow = "sum"
    got, _ = probed.aggregate_train(2, per_user)
    want, got = from_record(want), from_record(got)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probed.server_opt.m[key], plain.server_opt.m[key],
                                   rtol=1e-5, atol=1e-6)


SPEC = {"bench": {"dataset": "synthetic", "seeds": [0]},
        "grid": [{"name": "main", "attacks": ["fedrecattack"], "fractions": [0.05],
                  "defenses": ["none", "trimmed-mean"]},
                 {"name": "bounded", "attacks": ["fedrecattack"], "fractions": [0.05],
                  "defenses": ["trimmed-mean"], "config": {"attack-lr": 0.25}}],
        "base": {"algorithm": "fedavg", "model": "mf", "split": "ratio", "dim": 8,
                 "num-nodes": 2, "num-rounds": 2, "eval-every": 2, "cohort-fraction": 0.5,
                 "aggregation": "sum", "optimizer": "sgd", "lr": 0.5, "server-opt": "avgm",
                 "server-momentum": 0.5, "user-refit-steps": 3, "attack-targets": "unpopular:3",
                 "attack-lr": 1.0, "attack-steps": 2, "defense-trim": 0.1}}


@pytest.mark.slow
def test_a_probe_run_logs_every_round_and_counts_the_attackers_of_the_cohort(bench_script,
                                                                             tmp_path):
    import json

    probe = bench_script("attack_trim_probe")
    for follow in ("trim", "sum"):
        path = probe.run_probe(SPEC, "fedrecattack", 0.05, 0, 40, tmp_path, follow)
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        rounds = [x for x in lines if "round" in x and "kind" not in x]
        assert [r["round"] for r in rounds] == [1, 2]
        assert lines[-1]["kind"] == "run" and lines[0]["follow"] == follow
        assert sum(r["attackers_in_cohort"] for r in rounds) > 0
        for r in rounds:
            assert len(r["targets"]) == 3
            assert r["attackers_uploading"] == r["attackers_in_cohort"]
            assert 0.0 <= r["ahead"]["trim"]["er@10"] <= 1.0
            for t in r["targets"]:
                assert t["trimmed_each_end"] == int(0.1 * t["c"])
                assert t["score_step_sum"] == pytest.approx(
                    t["score_step_sum_attackers"] + t["score_step_sum_benign"], abs=1e-4)
    report = bench_script("attack_trim_report")
    text = report.report(tmp_path)
    assert "fedrecattack-f0.05-s0-follow-sum.jsonl" in text
    assert "the trimmed-mean run vs the undefended (sum) run" in text
    summary = report.summary_table(tmp_path, "fedrecattack-f0.05-s0", rounds=(1, 2))
    assert len(summary) == 4  # header, rule, rounds 1 and 2


def test_the_probed_cell_is_the_benchs_own_with_its_grid_config(bench_script):
    from florec.recdata.errors import ConfigError

    probe = bench_script("attack_trim_probe")
    plain = probe.trim_cell(SPEC, "fedrecattack", 0.05, 0)
    assert plain["grid"] == "main" and plain["defense"] == "trimmed-mean"
    assert probe.cell_config(SPEC, plain)["attack-lr"] == 1.0
    bounded = probe.trim_cell(SPEC, "fedrecattack", 0.05, 0, "bounded")
    assert probe.cell_config(SPEC, bounded)["attack-lr"] == 0.25
    with pytest.raises(ConfigError, match="no trimmed-mean cell fedrecattack f0.01 s0"):
        probe.trim_cell(SPEC, "fedrecattack", 0.01, 0)


def test_saturation_creates_its_output_folder(bench_script, tmp_path, monkeypatch):
    import json
    import sys

    probe = bench_script("attack_trim_probe")
    out = tmp_path / "new" / "folder"
    monkeypatch.setattr(sys, "argv", ["attack_trim_probe.py", "--saturation", "--out", str(out)])
    probe.main()
    rows = json.loads((out / "saturation.json").read_text())
    assert [r["margin"] for r in rows] == [0, 10, 20, 25, 28, 30, 32, 35, 40]


def test_fedrecattack_stops_pushing_targets_it_already_ranks_far_ahead(bench_script):
    probe = bench_script("attack_trim_rows")
    near, far = probe.saturation((0.0, 40.0))
    assert near["step_norm"] > 1.0  # lr 1 x 5 normalised steps (partly cancelling)
    assert far["step_norm"] < 1e-2


def _probe_file(path, follow, rounds):
    """A probe file with two targets per round; ``rounds``: round -> (kept, push, norm, ndcg)."""
    import json

    head = {"kind": "config", "follow": follow, "probe_users": 5,
            "config": {"attack": "a", "attack-fraction": 0.01, "seed": 0}}
    lines = [head]
    for rnd, (kept, push, norm, ndcg) in rounds.items():
        ahead = {rule: {"target_score": 11.0 - rnd if rule == "trim" else 10.0 - 3 * rnd,
                        "kth_score": 0.5,
                        "margin": 0.5, "er@10": 0.25, "valid_ndcg@10": ndcg[rule],
                        "target_bias": 2.0, "target_score_before_refit": 0.9}
                 for rule in ("trim", "sum")}
        targets = [{"c": c, "malicious": 2, "trimmed_each_end": c // 10, "attackers_kept": k,
                    "score_step_sum": 3.0, "score_step_sum_attackers": p,
                    "score_step_sum_benign": 3.0 - p, "score_step_trim": 1.0,
                    "bias_sum": 0.1, "bias_trim": 0.05}
                   for c, k, p in zip((20, 30), kept, push, strict=True)]
        lines.append({"round": rnd, "attackers_uploading": 2, "targets": targets,
                      "others_norm_trim_over_sum": norm["trim"] / norm["sum"],
                      "others_norm": norm, "kth_item_score_step": {"trim": 0.0, "sum": 0.1},
                      "ahead": ahead})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_report_tables_average_the_targets_and_pair_the_two_runs(bench_script, tmp_path):
    report = bench_script("attack_trim_report")
    norm = {"trim": 1.0, "sum": 4.0}
    nd = {"trim": 0.2, "sum": 0.15}
    for cell, kept in (("a-f0.01-s0", (0.5, None)), ("none-f0-s0", (None, None))):
        for follow in ("trim", "sum"):
            _probe_file(tmp_path / f"{cell}-follow-{follow}.jsonl", follow,
                        {1: (kept, (1.0, 3.0), norm, nd), 2: (kept, (0.0, 0.0), norm, nd)})
    rows = report.summary_table(tmp_path, "a-f0.01-s0", rounds=(2,))
    assert len(rows) == 3  # header, rule, round 2 only
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    # c_i mean of 20 and 30, cut 2 and 3; kept averages the targets that have it (0.5 only)
    assert cells[:4] == ["2", "2", "25.0 / 2.5", "0.50"]
    assert cells[7] == "+5.00"  # same uploads: target score trim (9.0) - sum (4.0)
    assert cells[8] == "0.25"  # other rows' change norm 1 / 4
    first = report.summary_table(tmp_path, "a-f0.01-s0", rounds=(1,))[2].split("|")
    assert first[5].strip() == "+2.00 / +2.00"  # the attackers' push, mean of 1 and 3
    assert report.fall(tmp_path, "a-f0.01-s0", (1, 2)) == pytest.approx(
        {"trim": 1.0, "sum": 3.0})
    clean = report.clean_table(tmp_path, "none-f0-s0", rounds=(1, 2))
    assert [c.strip() for c in clean[2].strip("|").split("|")] == [
        "1", "1.00 / 4.00", "0.2000 / 0.1500", "0.25", "+0.0500"]
    text = report.report(tmp_path)
    assert "a round: 20-30 (mean 25.0), of them benign 18-28 (mean 23.0)" in text
    assert text.count("summary (docs/attacks.md)") == 2
    assert "| - |" in text  # the clean cell has no attackers' share
    assert text.count("the trimmed-mean run vs the undefended (sum) run") == 2
    (tmp_path / "none-f0-s0-follow-sum.jsonl").unlink()  # a cell probed along one run only
    assert report.report(tmp_path).count("summary (docs/attacks.md)") == 1


def test_the_kth_item_skips_the_masked_items_and_the_targets_and_matches_topk(bench_script):
    import scipy.sparse as sp
    import torch

    analysis = bench_script("attack_trim_analysis")
    p = analysis.Probe.__new__(analysis.Probe)  # only the test mask and the targets are needed
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 30))
    mask = sp.random(6, 30, density=0.3, random_state=4, format="csr")
    mask.data[:] = 1.0
    p.mask_test, p.know = mask, type("Know", (), {"targets": TARGETS})()
    kth = p.kth_item(scores)
    masked = scores.copy()
    masked[mask.toarray() > 0] = -np.inf
    masked[:, TARGETS] = -np.inf
    for u in range(6):
        assert mask[u, kth[u]] == 0 and kth[u] not in TARGETS
        assert (masked[u] > scores[u, kth[u]]).sum() == analysis.K - 1
    want = torch.as_tensor(masked).topk(analysis.K, dim=1).values[:, -1].numpy()
    np.testing.assert_array_equal(scores[np.arange(6), kth], want)
