"""Secure aggregation through a real `flwr run` simulation: Fair's popularity sum and the rounds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_flower_simulation_with_secagg_equals_the_in_process_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "florec.sim.cli", "sim", "--dataset", "synthetic", "--nodes",
           "4", "--rounds", "2", "--out", str(out), "-c",
           "synthetic-users=40 synthetic-items=50 dim=8 secagg=true aggregation='sparse' "
           "mf-loss='fs-point'"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["train"]["secagg-alive"] for r in rows] == [4, 4]
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config({k: v for k, v in saved["config"].items() if k != "out-dir"})
    local = run_federated(LocalGrid(cfg.to_flower(), 4), cfg, tmp_path / "local")
    for key, value in saved["runs"][0]["metrics"].items():
        assert local["metrics"][key] == pytest.approx(value, abs=1e-6), key
