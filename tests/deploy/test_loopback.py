"""A real Flower deployment on 127.0.0.1: SuperLink, SuperNodes and SuperExecs as processes.

Each test starts the full topology (no Docker, no simulation runtime), runs 1-2 rounds of
FedAvg-MF on synthetic data and tears it down; about 40-60 s each on 2 cores.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.deploy import LoopbackDeployment
from florec.sim.deploy_run import message_seconds, report_nodes
from florec.sim.deploy_services import make_certs
from florec.sim.local_grid import LocalGrid

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "dim": 8, "num-rounds": 2}


def logs_tail(log_dir: Path, n: int = 15) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-n:])
                     for p in sorted(Path(log_dir).glob("*.log")))


def rounds_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def assert_same_as_in_process_run(out: Path, tmp_path: Path) -> None:
    """Same results.json schema (and numbers) as the ServerApp on the in-process grid, which
    tests/sim/test_cli.py checks against Flower's simulation."""
    saved = json.loads((out / "results.json").read_text())
    cfg = parse_run_config({k: v for k, v in saved["config"].items() if k != "out-dir"})
    local = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, tmp_path / "local")
    ref = json.loads((tmp_path / "local" / "results.json").read_text())
    assert set(saved) == set(ref) and set(saved["config"]) == set(ref["config"])
    assert set(saved["env"]) == set(ref["env"])
    assert set(saved["runs"][0]) == set(ref["runs"][0])
    assert set(saved["runs"][0]["metrics"]) == set(ref["runs"][0]["metrics"])
    assert [set(r) for r in rounds_of(out)] == [set(r) for r in rounds_of(tmp_path / "local")]
    assert json.loads((out / "config.json").read_text()).keys() == {"config", "env"}
    for key, value in local["metrics"].items():
        assert saved["runs"][0]["metrics"][key] == pytest.approx(value, abs=1e-6), key


def processes_using_port(port: int) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if re.search(rf"(127\.0\.0\.1:|--port ){port}\b", cmd):
            found.append(cmd)
    return found


@pytest.mark.slow
def test_florec_deploy_local_runs_fedavg_on_two_supernodes_like_simulation(tmp_path):
    out = tmp_path / "run"
    overrides = " ".join(f"{k}={v}" for k, v in SMALL.items()
                         if k not in ("dataset", "num-rounds"))
    proc = subprocess.run(
        [sys.executable, "-m", "florec.sim.cli", "deploy", "local", "--dataset", "synthetic",
         "--nodes", "2", "--rounds", "2", "--out", str(out), "-c", overrides],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    run = saved["runs"][0]
    assert saved["status"] == "finished" and run["setting"] == "federated"
    assert run["rounds"] == 2 and run["num_nodes"] == 2 and run["metrics"]["num-users"] == 40
    assert [r["train"]["num-replies"] for r in rounds_of(out)] == [2, 2]
    assert "fedavg-mf" in proc.stdout and "ClientApp messages" in proc.stdout
    # node i read only its own shard; the server processes opened no data
    sizes = [len(json.loads((out / "shards" / f"node-000{i}" / "shard.json").read_text())
                 ["clients"][0]) for i in range(2)]
    assert sizes == [20, 20] and "the server opens no data" in proc.stdout
    assert_same_as_in_process_run(out, tmp_path)
    # the processes were real and separate, and every one of them is gone
    logs = {p.stem for p in (out / "logs").glob("*.log")}
    assert logs == {"superlink", "superexec-server", "supernode-0", "supernode-1",
                    "superexec-0", "superexec-1", "flwr-run"}
    # 2 nodes x (the query.partition that tells the server its sizes + 2 rounds x (train, evaluate))
    assert len(message_seconds(out / "logs")) == 10
    port = int(re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", proc.stdout).group(1))
    assert port != 39091 and not processes_using_port(port)


@pytest.mark.slow
def test_deployment_with_tls_and_authentication(tmp_path):
    certs = make_certs(tmp_path / "certs", supernode_keys=2)
    assert {"ca.crt", "server.pem", "server.key", "superexec.secret", "supernode-0.key",
            "supernode-1.pub"} <= {p.name for p in certs.iterdir()}
    out, logs = tmp_path / "run", tmp_path / "logs"
    with LoopbackDeployment(2, logs, certs=certs, auth=True) as dep:
        assert dep.superlink_up("https") and not dep.superlink_up("http")
        # the SuperLink only let in the keys registered with `flwr supernode register`
        assert dep.node_ids() == dep.registered
        code = dep.submit(SMALL | {"num-nodes": 2, "num-rounds": 1, "out-dir": str(out)},
                          echo=False)
        assert code == 0, logs_tail(logs)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished" and saved["runs"][0]["rounds"] == 1, logs_tail(logs)
    assert_same_as_in_process_run(out, tmp_path)
    link_log = (logs / "superlink.log").read_text()
    assert "insecure" not in link_log.lower()
    assert "SuperNode authentication is disabled" not in link_log
    assert not processes_using_port(dep.port)


@pytest.mark.slow
def test_killed_supernode_run_finishes_with_the_remaining_node(tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    # twice a ClientApp message on a loaded 2-core box (about 15 s at load 20), and the time
    # round 2 waits for the killed node
    config = SMALL | {"num-nodes": 2, "out-dir": str(out), "round-timeout-s": 30.0}
    with LoopbackDeployment(2, logs) as dep:
        def kill_after_round_one() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                rows = out / "rounds.jsonl"
                if rows.exists() and rows.read_text().strip():
                    dep.kill_node(1)  # SIGKILL: a crash, the node cannot say goodbye
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_after_round_one, daemon=True)
        killer.start()
        code = dep.submit(config, echo=False)
        killer.join(timeout=5)
        assert code == 0, logs_tail(logs)
        report = report_nodes(dep, out)
        node_1 = dep.node_ids()[1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished", logs_tail(logs)
    rows = rounds_of(out)
    assert [r["train"]["num-replies"] for r in rows] == [2, 1], logs_tail(logs)
    assert rows[1]["valid"]["num-users"] == 20  # node 0's users only
    assert saved["runs"][0]["rounds"] == 2
    # the launcher says which node dropped: by round, and by partition and SuperNode ID
    assert any(line.startswith("round 2: 1 of 2 sampled nodes replied") and "partition 1" in line
               for line in report), report
    assert not any("(partition ?)" in line or ") (partition" in line for line in report), report
    assert f"supernode-1 (SuperNode ID {node_1}) exited with code -9 during the run" in report
    # the server's record of the lost node (the streamed flwr-run.log can end before its last
    # lines arrive on a loaded machine, so the results file is what is checked)
    assert rows[1]["dropped"] == [f"node {node_1} (partition 1)"], rows[1]["dropped"]
