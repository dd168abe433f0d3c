"""`florec perf`: the matrix, the memory sampler, and one real cell with the JSON keys."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from florec.recdata.errors import ConfigError
from florec.sim.perf import PerfCell, TreeMemory, perf_cells, read_rounds, train_seconds

ROOT = Path(__file__).resolve().parents[2]
JSON_KEYS = {"dataset", "algorithm", "population", "cohort", "bucket", "s_per_round",
             "framework_ms_per_update", "peak_mem_mb", "peak_pss_mb", "bytes_per_round"}


def test_synthetic_cells_take_the_populations_and_skip_buckets_larger_than_them():
    cells = perf_cells(["synthetic"], [5, 50], [1.0, 0.5], [10])
    assert [(c.population, c.cohort, c.bucket) for c in cells] == [(50, 1.0, 10), (50, 0.5, 10)]


def test_a_synthetic_cell_is_shaped_like_ml1m_and_sets_bucket_and_cohort():
    cfg = PerfCell("synthetic", 300, 0.1, 30).run_config(rounds=3)
    assert cfg["synthetic-users"] == 300 and cfg["synthetic-items"] == 3706
    assert cfg["users-per-node"] == 30 and cfg["cohort-fraction"] == 0.1
    assert cfg["num-rounds"] == 3
    assert "synthetic-users" not in PerfCell("ml-1m", 6040, 1.0, 100).run_config(3)


def test_train_seconds_exclude_the_evaluation():
    assert train_seconds({"seconds": 3.0, "eval_seconds": 1.25}) == pytest.approx(1.75)
    assert train_seconds({"seconds": 2.0}) == pytest.approx(2.0)


def test_tree_memory_sees_a_child_process():
    with TreeMemory(every_s=0.05) as mem:
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time; b = bytearray(200 * 2**20); time.sleep(1.0)"])
        child.wait()
    assert mem.peak_mb > 200


def test_a_run_without_rounds_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="wrote no .*rounds.jsonl"):
        read_rounds(tmp_path)


@pytest.mark.slow
def test_perf_json_prints_one_object_per_cell_with_the_documented_keys():
    proc = subprocess.run(
        [sys.executable, "-m", "florec.sim.cli", "perf", "--datasets", "synthetic", "--populations",
         "40", "--cohorts", "1.0", "--buckets", "20", "--rounds", "2", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(rows) == 1 and JSON_KEYS <= rows[0].keys()
    row = rows[0]
    assert row["nodes"] == 2 and row["s_per_round"] > 0 and row["peak_mem_mb"] > 100
    assert 0 < row["peak_pss_mb"] <= row["peak_mem_mb"] and "ray-actor" in row["peak_pss_by_role"]
    assert row["bytes_per_round"] > 0
    assert row["local_round_over_central_epoch"] > 0


def test_compute_ratio_trains_every_user_once_per_round_in_each_repetition():
    from florec.client.trainers.bpr_embedding import local_update
    from florec.sim.perf import compute_ratio

    seen = []

    def recording(bucket, *args):
        seen.append(bucket.users.copy())
        return local_update(bucket, *args)

    cfg = {"dataset": "synthetic", "synthetic-users": 30, "synthetic-items": 40, "dim": 8,
           "users-per-node": 7, "split": "ratio"}
    row = compute_ratio(cfg, reps=2, central_batch=64, trainers={"local": local_update,
                                                                 "recorded": recording})
    per_rep = [np.concatenate(seen[:5]), np.concatenate(seen[5:])]
    assert len(seen) == 10  # ceil(30 / 7) buckets, twice
    for users in per_rep:
        np.testing.assert_array_equal(np.sort(users), np.arange(30))
    for name in ("local", "recorded"):
        assert row[f"{name}_round_s"] > 0 and row[f"{name}_round_over_central_epoch"] > 0
    assert row["central_epoch_s"] > 0 and row["reps"] == 2 and row["interactions"] > 0


def test_compute_ratio_needs_buckets_of_mf_users():
    from florec.sim.perf import compute_ratio

    with pytest.raises(ConfigError, match="users-per-node"):
        compute_ratio({"dataset": "synthetic", "users-per-node": 0})


def test_framework_time_discounts_the_compute_that_ray_runs_in_parallel():
    from florec.sim.perf import framework_seconds, parallel_workers

    assert parallel_workers(PerfCell("synthetic", 6040, 1.0, 100), cpus=2) == 2
    assert parallel_workers(PerfCell("synthetic", 100, 1.0, 100), cpus=16) == 1
    assert framework_seconds(12.5, 18.0, 2) == pytest.approx(3.5)
