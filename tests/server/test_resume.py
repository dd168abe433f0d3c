"""Checkpoints and resume: a killed run continues to the same final metrics."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError, DataError
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid

ROOT = Path(__file__).resolve().parents[2]
BASE = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
        "synthetic-interactions": 12, "dim": 8, "num-nodes": 4, "num-rounds": 4,
        "checkpoint-every": 1, "store-spill-mb": 0.0}

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
cfg = parse_run_config(json.loads(sys.argv[1]))
slow = lambda pid, kind: time.sleep(0.1) or False  # a slow federation, to be killed mid-run
run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, fail=slow), cfg, cfg.out_dir)
"""


def run(out, config, **changes):
    cfg = parse_run_config(config | changes | {"out-dir": str(out)})
    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, out)


def latest_round(out):
    try:
        return json.loads((out / "checkpoint" / "LATEST").read_text())["round"]
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("extra", [
    {},
    {"cohort-fraction": 0.3, "aggregation": "sparse", "store-spill-mb": 64.0},
    {"algorithm": "fedcia", "align-steps": 5},
    {"algorithm": "fedcia", "model": "gfcf", "gfcf-s": 8},
    {"model": "sasrec", "max-seq-len": 8, "heads": 1, "seq-layers": 1, "server-opt": "adam",
     "server-lr": 0.01},  # the server optimiser's moments are in the checkpoint
])
def test_a_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one(tmp_path, extra):
    config = BASE | extra
    whole = run(tmp_path / "whole", config)
    run(tmp_path / "cut", config, **{"num-rounds": 2})
    resumed = run(tmp_path / "cut", config, resume=True)
    assert resumed["rounds"] == 4
    if extra.get("model") != "gfcf":  # GF-CF's rounds tie up to 1e-16: any can be "best"
        assert resumed["best_round"] == whole["best_round"]
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, abs=1e-6), key
    rows = [json.loads(x) for x in (tmp_path / "cut" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_killed_subprocess_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = BASE | {"num-rounds": 8, "cohort-fraction": 0.5, "out-dir": str(tmp_path / "k")}
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while latest_round(tmp_path / "k") < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.kill()  # by PID: the process this test started
        proc.wait(10)
    killed = json.loads((tmp_path / "k" / "results.json").read_text())
    assert killed["status"] == "running" and 2 <= killed["runs"][0]["rounds"] < 8
    resumed = run(tmp_path / "k", config, resume=True)
    whole = run(tmp_path / "whole", config)
    assert resumed["rounds"] == 8 and resumed["best_round"] == whole["best_round"]
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, abs=1e-6), key
    saved = json.loads((tmp_path / "k" / "results.json").read_text())
    assert saved["status"] == "finished"
    rounds = [json.loads(x)["round"]
              for x in (tmp_path / "k" / "rounds.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 9))


def test_resume_with_a_changed_config_fails_in_one_line_naming_the_key(tmp_path):
    run(tmp_path, BASE, **{"num-rounds": 1})
    with pytest.raises(ConfigError) as err:
        run(tmp_path, BASE, resume=True, lr=0.01)
    assert "'lr'" in str(err.value) and "\n" not in str(err.value)
    assert run(tmp_path, BASE, resume=True, **{"num-rounds": 2})["rounds"] == 2


def test_resume_without_a_checkpoint_says_so_in_one_line(tmp_path):
    run(tmp_path / "a", BASE, **{"checkpoint-every": 0, "num-rounds": 1})
    for out in (tmp_path / "a", tmp_path / "never"):
        with pytest.raises(ConfigError) as err:
            run(out, BASE, resume=True, **{"checkpoint-every": 0})
        assert "no checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_node_snapshot_stops_the_resume_with_a_data_error(tmp_path):
    run(tmp_path, BASE, **{"num-rounds": 2})
    snap = next((tmp_path / "checkpoint" / "nodes").rglob("part-2.npz"))
    snap.unlink()
    with pytest.raises(DataError) as err:
        run(tmp_path, BASE, resume=True)
    assert "restore" in str(err.value) and "\n" not in str(err.value)


def test_checkpoints_keep_only_the_newest_and_a_fresh_run_clears_them(tmp_path):
    run(tmp_path, BASE, **{"num-rounds": 3})
    ckpt = tmp_path / "checkpoint"
    assert sorted(p.name for p in ckpt.glob("round-*")) == ["round-000003"]
    assert sorted(p.name for p in (ckpt / "nodes").glob("round-*")) == ["round-000003"]
    assert len(list((ckpt / "nodes" / "round-000003").glob("part-*.npz"))) == 4
    run(tmp_path, BASE, **{"checkpoint-every": 0, "num-rounds": 1})
    assert not ckpt.exists()
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 1
