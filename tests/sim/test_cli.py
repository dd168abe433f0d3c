"""The `florec` command: data commands, one-line errors, and a real `flwr run` simulation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def florec(*args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "florec.sim.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def superlink_pids() -> set[int]:
    import psutil

    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("flower-superlink" in part for part in (p.info["cmdline"] or [])):
            pids.add(p.info["pid"])
    return pids


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_data_list_names_the_datasets():
    out = florec("data", "list").stdout
    for name in ("ml-100k", "ml-1m", "amazon-scientific", "synthetic"):
        assert name in out


def test_unknown_dataset_is_one_line_with_the_choices():
    line = error_line(florec("data", "stats", "ml-10k"))
    assert "ml-10k" in line and "ml-100k" in line


def test_missing_data_folder_is_one_line_with_the_fix(tmp_path):
    line = error_line(florec("data", "stats", "ml-1m", "--data-dir", str(tmp_path)))
    assert "ml-1m" in line and "FLOREC_DATA_DIR" in line


def test_unknown_config_key_is_one_line():
    line = error_line(florec("central", "--dataset", "synthetic", "-c", "learning_rate=0.1"))
    assert "unknown config key 'learning_rate'" in line


def test_data_split_writes_recbole_atomic_files(tmp_path):
    proc = florec("data", "split", "synthetic", "--split", "ratio", "--seed", "1",
                  "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for part in ("train", "valid", "test"):
        head = (tmp_path / f"synthetic.{part}.inter").read_text().splitlines()[0]
        assert head == "user_id:token\titem_id:token\ttimestamp:float"


def test_ml100k_stats_on_the_shared_data(shared_data):
    proc = florec("data", "stats", "ml-100k", "--data-dir", str(shared_data))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "943" in proc.stdout and "1682" in proc.stdout and "100000" in proc.stdout


@pytest.mark.slow
def test_flwr_simulation_end_to_end(tmp_path):
    """`florec sim` -> `flwr run .` on 10 simulated nodes, 2 rounds; then the SuperLink is gone."""
    before = superlink_pids()
    out = tmp_path / "run"
    proc = florec("sim", "--dataset", "synthetic", "--nodes", "10", "--rounds", "2",
                  "--out", str(out), "-c", "synthetic-users=60 synthetic-items=50 dim=8",
                  env={"FLWR_HOME": str(tmp_path / "flwr")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished"
    run = saved["runs"][0]
    assert run["rounds"] == 2 and run["num_nodes"] == 10 and run["setting"] == "federated"
    assert run["metrics"]["num-users"] == 60
    assert saved["config"]["num-nodes"] == 10
    assert superlink_pids() <= before  # the SuperLink that `florec sim` started is gone
    # the in-process grid (used by benchmarks and tests) reproduces Flower's numbers
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config({k: v for k, v in saved["config"].items() if k != "out-dir"})
    local = run_federated(LocalGrid(cfg.to_flower(), 10), cfg, tmp_path / "local")
    for key, value in run["metrics"].items():
        assert local["metrics"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
# the dense payload goes through the same messages (tests/server covers it in process)
@pytest.mark.parametrize(("comm", "method"), [("factored", "fedcia-mf-factored-r16")])
def test_flwr_simulation_of_fedcia_with_its_align_messages(tmp_path, comm, method):
    """FedCIA's second message type (train.align) goes through a real Flower simulation."""
    out = tmp_path / "run"
    proc = florec("sim", "--dataset", "synthetic", "--algorithm", "fedcia", "--nodes", "3",
                  "--rounds", "2", "--out", str(out), "-c",
                  "synthetic-users=30 synthetic-items=40 dim=8 align-steps=5 "
                  f"fedcia-comm='{comm}' clients-per-node=2",
                  env={"FLWR_HOME": str(tmp_path / "flwr")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["align"]["clients"] for r in rows] == [6, 6]
    assert json.loads((out / "results.json").read_text())["runs"][0]["method"] == method


def test_resume_overrides_replay_the_saved_config_with_resume_on(tmp_path, small_config):
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.cli_run import resume_overrides
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config(small_config | {"checkpoint-every": 1, "lr": 0.02,
                                           "out-dir": str(tmp_path)})
    run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, tmp_path)
    overrides, n = resume_overrides(tmp_path, ["num-rounds=5"])
    assert overrides["resume"] is True and overrides["checkpoint-every"] == 1
    assert overrides["lr"] == 0.02 and overrides["num-rounds"] == 5
    assert overrides["out-dir"] == str(tmp_path) and n == overrides["num-nodes"] == 4


def test_resume_without_a_results_folder_is_a_one_line_error(tmp_path):
    proc = florec("sim", "--resume", str(tmp_path / "nothing"))
    assert "config.json is missing" in error_line(proc)


@pytest.mark.parametrize(("args", "named"), [
    (["--batch-size", "0"], "--batch-size 0 is below 1"),
    (["--epochs", "0"], "--epochs 0 is below 1"),
    (["--epochs", "-3"], "--epochs -3 is below 1"),
    (["-c", "device='tpu'"], "config key 'device': Value error, use auto, cpu, cuda"),
    (["--model", "mf", "-c", "user-refit-steps=20"], "a central run would ignore it"),
])
def test_bad_central_values_are_one_line_before_training(tmp_path, args, named):
    """Issue 11 §5: these raised tracebacks or 'finished' with empty metrics."""
    line = error_line(florec("central", "--dataset", "synthetic", "--out", str(tmp_path / "o"),
                             *args))
    assert named in line
    assert not (tmp_path / "o" / "results.json").exists()
