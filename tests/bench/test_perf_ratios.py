"""bench/perf_ratios.py: round / central epoch of the fair, FedCIA and sequential trainers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

SYNTH = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 8, "split": "ratio"}


def test_side_by_side_alternates_and_reports_the_median_of_per_pair_ratios(
        bench_script, monkeypatch) -> None:
    ratios = bench_script("perf_ratios")
    clock = iter(np.cumsum([0, 1, 0, 3, 0, 2, 0, 2, 0, 4, 0, 20], dtype=float).tolist())
    monkeypatch.setattr(ratios.time, "perf_counter", lambda: next(clock))
    calls: list[str] = []
    row = ratios.side_by_side(lambda: calls.append("c"), lambda: calls.append("f"), 3)
    assert calls == ["c", "f"] * 3
    # pairs (central, round): (1, 3), (2, 2), (4, 20) -> ratios 3, 1, 5
    assert row["central_epoch_s"] == 2 and row["round_s"] == 3
    assert row["round_over_central_epoch"] == 3 and row["reps"] == 3


def test_union_triples_maps_each_clients_rows_to_global_users(bench_script) -> None:
    ratios = bench_script("perf_ratios")
    users = [np.array([5, 7]), np.array([1])]
    triples = [(np.array([1, 0, 1]), np.array([10, 11, 12]), np.array([3, 4, 5])),
               (np.array([0]), np.array([13]), np.array([6]))]
    u, pos, neg = ratios.union_triples(users, triples)
    assert u.tolist() == [7, 5, 7, 1]
    assert pos.tolist() == [10, 11, 12, 13] and neg.tolist() == [3, 4, 5, 6]


@pytest.mark.parametrize("loss", ["fs-pair", "ubpr", "wmf"])
def test_fair_ratio_times_both_sides_on_the_same_interactions(bench_script, loss) -> None:
    ratios = bench_script("perf_ratios")
    row = ratios.fair_ratio(ratios.FAIR | SYNTH | {"mf-loss": loss, "users-per-node": 16}, 1)
    assert row["trainer"] == f"fair-{loss}" and row["nodes"] == 3 and row["users"] == 40
    assert row["central_epoch_s"] > 0 and row["round_s"] > 0
    assert math.isclose(row["round_over_central_epoch"],
                        row["round_s"] / row["central_epoch_s"], rel_tol=1e-9)


def test_fedcia_ratio_trains_every_training_interaction_once_on_each_side(bench_script) -> None:
    from florec.recdata.store import get_split

    ratios = bench_script("perf_ratios")
    cfg = ratios.FEDCIA | SYNTH | {"num-nodes": 2, "clients-per-node": 3,
                                   "local-batch-size": 32}
    row = ratios.fedcia_ratio(cfg, 1)
    split, _ = get_split("synthetic", "ratio", synthetic={"n_users": 40, "n_items": 60,
                                                          "mean_interactions": 8})
    assert row["clients"] == 6 and row["interactions"] == split.matrix("train").nnz
    assert row["round_over_central_epoch"] > 0


def test_the_union_of_fixed_triples_is_the_training_matrix(bench_script) -> None:
    from florec.client.trainers.bucket import Bucket
    from florec.client.trainers.private_model import fixed_triples
    from florec.recdata.partition import partition_users
    from florec.recdata.store import get_split

    ratios = bench_script("perf_ratios")
    split, _ = get_split("synthetic", "ratio", synthetic={"n_users": 40, "n_items": 60,
                                                          "mean_interactions": 8})
    clients = [Bucket.from_split(split, u)
               for u in partition_users(40, num_nodes=6, mode="floor")]
    u, pos, neg = ratios.union_triples([c.users for c in clients],
                                       [fixed_triples(c, 0, k) for k, c in enumerate(clients)])
    train = split.matrix("train")
    rebuilt = sp.csr_matrix((np.ones(len(u)), (u, pos)), shape=train.shape)
    assert (rebuilt != (train > 0)).nnz == 0
    assert not np.asarray(train[u, neg]).any()  # negatives are unseen items


def test_seq_ratio_runs_every_bucket_over_the_central_windows(bench_script) -> None:
    ratios = bench_script("perf_ratios")
    cfg = ratios.SEQ | SYNTH | {"split": "loo", "dim": 8, "max-seq-len": 6, "heads": 1,
                                "seq-layers": 1, "num-nodes": 4, "local-batch-size": 16}
    row = ratios.seq_ratio(cfg, 1)
    assert row["trainer"] == "seq-sasrec" and row["nodes"] == 4 and row["positions"] > 0
    assert row["round_over_central_epoch"] > 0


def test_ratio_table_has_a_line_per_trainer_with_its_ratio_and_load(bench_script) -> None:
    ratios = bench_script("perf_ratios")
    row = {"trainer": "fedcia-mf", "dataset": "fedcia-ml100k", "users": 943, "clients": 100,
           "central_epoch_s": 0.4, "round_s": 1.4, "round_over_central_epoch": 3.5, "reps": 5,
           "load_avg_1m": [8.73, 8.72]}
    lines = ratios.ratio_table([{"rows": [row, row | {"trainer": "seq-sasrec"}]}]).splitlines()
    assert len(lines) == 4
    assert lines[2] == ("| fedcia-mf | fedcia-ml100k | 943 | 100 | 0.40 | 1.40 | **3.50x** | 5 | "
                        "8.7-8.7 |")


def test_profile_writes_the_federated_rounds_top_functions(bench_script, tmp_path,
                                                           monkeypatch) -> None:
    ratios = bench_script("perf_ratios")
    monkeypatch.setitem(ratios.PROFILE, "out", tmp_path / "r.prof")

    def federated_round() -> None:
        sum(range(1000))

    ratios.side_by_side(lambda: None, federated_round, 1)
    ratios.write_profile(tmp_path / "r.prof", tmp_path / "r.txt")
    text = (tmp_path / "r.txt").read_text()
    assert "federated_round" in text and not (tmp_path / "r.prof").exists()
