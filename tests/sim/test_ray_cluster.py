"""`florec sim --ray-address`: addresses, one-line errors, and a run on a two-node Ray cluster."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError, FloRecError
from florec.sim.flower import free_ports
from florec.sim.ray_cluster import (
    check_ray_address,
    cluster_env,
    parse_ray_address,
    shared_data_overrides,
)
from florec.sim.teardown import stop_process_tree

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


def florec(*args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "florec.sim.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1",
                               **(env or {})})


def test_parse_ray_address_splits_host_and_port():
    assert parse_ray_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_ray_address(" head.example:7000 ") == ("head.example", 7000)
    assert parse_ray_address("[::1]:6379") == ("::1", 6379)


@pytest.mark.parametrize("bad", ["ray://head:10001", "auto", "head", ":6379", "head:0",
                                 "head:port", "head:70000"])
def test_parse_ray_address_refuses_what_is_not_host_port(bad):
    with pytest.raises(ConfigError, match="ray-address") as err:
        parse_ray_address(bad)
    assert "\n" not in str(err.value)


def test_check_ray_address_accepts_a_listening_port_and_names_a_closed_one():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert check_ray_address(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"
    with pytest.raises(FloRecError, match=f"no Ray cluster answers at 127.0.0.1:{port}") as err:
        check_ray_address(f"127.0.0.1:{port}", timeout_s=2.0)
    assert "ray start --head" in str(err.value) and "\n" not in str(err.value)


def test_cluster_env_sets_ray_address_without_touching_the_original():
    env = {"PATH": "/bin"}
    joined = cluster_env(env, "127.0.0.1:6379")
    assert joined == {"PATH": "/bin", "RAY_ADDRESS": "127.0.0.1:6379"} and "RAY_ADDRESS" not in env


def test_shared_data_overrides_forwards_florec_data_dir_as_the_runs_data_dir(tmp_path):
    env = {"FLOREC_DATA_DIR": str(tmp_path / "data" / ".." / "data")}
    assert shared_data_overrides({"rounds": 2}, env) == {"rounds": 2,
                                                         "data-dir": str(tmp_path / "data")}
    assert shared_data_overrides({"data-dir": "/mnt/d"}, env) == {"data-dir": "/mnt/d"}
    assert shared_data_overrides({"rounds": 2}, {}) == {"rounds": 2}


def test_flwr_run_checks_the_ray_address_before_starting_a_superlink(tmp_path):
    from florec.sim.flower import flower_env, flwr_run

    port = free_ports(1)[0]
    with pytest.raises(FloRecError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        flwr_run({}, 2, env=flower_env(tmp_path / "flwr"), ray_address=f"127.0.0.1:{port}")
    assert not (tmp_path / "flwr").exists()  # no run folder, no SuperLink


@pytest.mark.parametrize(("cpus", "gpus"), [(0.5, 0.0), (0.0, 0.0), (1.0, -1.0)])
def test_flwr_run_refuses_resources_flower_cannot_take(tmp_path, cpus, gpus):
    from florec.sim.flower import flower_env, flwr_run

    with pytest.raises(ConfigError, match="whole CPUs per client"):
        flwr_run({}, 2, cpus, gpus, env=flower_env(tmp_path / "flwr"))
    assert not (tmp_path / "flwr").exists()


def test_sim_with_an_unreachable_ray_address_fails_in_one_line_and_claims_no_folder(tmp_path):
    port = free_ports(1)[0]
    out = tmp_path / "run"
    proc = florec("sim", "--dataset", "synthetic", "--nodes", "2", "--rounds", "1",
                  "--out", str(out), "--ray-address", f"127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"no Ray cluster answers at 127.0.0.1:{port}" in lines[0]
    assert not out.exists()


def start_ray_node(temp_dir: Path, log: Path, head: str | None = None):
    """`ray start --block` on 127.0.0.1, every port chosen free; (process, address).

    Each node offers 2 CPUs and 1 logical GPU (Ray accepts `--num-gpus` without a device; the
    actors then see no CUDA device and run on the CPU).
    """
    p = free_ports(8)
    cmd = [str(RAY), "start", "--block", "--num-cpus=2", "--num-gpus=1",
           "--node-ip-address=127.0.0.1", "--disable-usage-stats",
           "--object-store-memory=80000000", f"--node-manager-port={p[1]}",
           f"--object-manager-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
           f"--dashboard-agent-grpc-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
           f"--metrics-export-port={p[6]}", "--min-worker-port=0", "--max-worker-port=0"]
    if head is None:
        cmd += ["--head", f"--port={p[0]}", "--include-dashboard=false",
                f"--ray-client-server-port={p[7]}", f"--temp-dir={temp_dir}"]
    else:
        cmd += [f"--address={head}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            return proc, None
        time.sleep(0.5)
    return proc, f"127.0.0.1:{p[0]}"


@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray head and a second Ray node on 127.0.0.1 (2 CPUs, 1 GPU each), stopped by PID after."""
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    temp_dir = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))  # Ray's socket paths are short
    procs = []
    try:
        head, address = start_ray_node(temp_dir, tmp_path / "head.log")
        procs.append(head)
        if address is None:
            pytest.skip("`ray start --head` did not start: "
                        + (tmp_path / "head.log").read_text().strip().splitlines()[-1][:200])
        worker, joined = start_ray_node(temp_dir, tmp_path / "worker.log", head=address)
        procs.append(worker)
        if joined is None:
            pytest.skip("the second Ray node did not join: "
                        + (tmp_path / "worker.log").read_text().strip().splitlines()[-1][:200])
        yield address, temp_dir
    finally:
        for proc in reversed(procs):
            stop_process_tree(proc.pid, session=True)
            proc.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def actor_nodes(temp_dir: Path) -> dict[int, str]:
    """PID of every ClientAppActor worker -> the raylet log (one per Ray node) that started it."""
    logs = next(temp_dir.glob("session_2*")) / "logs"
    pids = {int(m.group(1)) for f in logs.glob("worker-*.out") if "ClientAppActor" in f.read_text()
            for m in [re.search(r"-(\d+)\.out$", f.name)] if m}
    started = {}
    for raylet in logs.glob("raylet*.out"):
        for m in re.finditer(r"Started worker process with pid (\d+)", raylet.read_text()):
            started[int(m.group(1))] = raylet.name
    return {pid: started.get(pid, "?") for pid in pids}


@pytest.mark.slow
def test_sim_runs_its_clients_on_both_nodes_of_an_existing_ray_cluster(ray_cluster, tmp_path):
    address, temp_dir = ray_cluster
    out = tmp_path / "run"
    # per node min(2 CPUs / 1, 1 GPU / 1) = 1 actor: the GPU share binds (CPUs alone allow 2)
    proc = florec("sim", "--dataset", "synthetic", "--nodes", "4", "--rounds", "2",
                  "--out", str(out), "--ray-address", address, "--cpus-per-client", "1",
                  "--gpus-per-client", "1",
                  "-c", "synthetic-users=40 synthetic-items=30 dim=8 device='cpu'",
                  env={"FLWR_HOME": str(tmp_path / "flwr")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished"
    run = saved["runs"][0]
    assert run["rounds"] == 2 and run["num_nodes"] == 4 and run["metrics"]["num-users"] == 40
    # Flower's actors ran on the cluster (its temp dir), one per node: two raylets
    nodes = actor_nodes(temp_dir)
    assert len(nodes) == 2, nodes
    assert sorted(nodes.values()) == ["raylet.1.out", "raylet.out"], nodes
