"""deploy/: host networking, per-node data, the image's contents and the Docker test's checks.

The end-to-end run (images built, compose topology up, plain / TLS / a SuperNode stopped) is
``make docker-test``: several minutes cold on 2 cores, so here it runs only when asked for with
``FLOREC_DOCKER_TEST=1`` and a Docker engine answers or can be started.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
sys.path.insert(0, str(DEPLOY))

from docker_engine import DockerError, compose_command, images_of, why_no_engine  # noqa: E402
from docker_topology import check_results, node_data  # noqa: E402

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "dim": 8, "num-rounds": 2, "num-nodes": 2}


def services(*names: str) -> dict:
    out: dict = {}
    for name in names:
        for svc, spec in yaml.safe_load((DEPLOY / name).read_text())["services"].items():
            out.setdefault(svc, {}).update(spec)
    return out


def test_every_service_uses_host_networking_and_each_node_mounts_only_its_own_shard():
    svc = services("compose.yml")
    assert {n for n, s in svc.items() if s.get("network_mode") == "host"} == set(svc) - {
        "superlink-state"}
    for i in range(2):
        app = svc[f"superexec-clientapp-{i}"]
        assert app["volumes"] == [f"${{FLOREC_DATA_{i}:-./data/node-000{i}}}:/data:ro"]
        assert app["environment"]["FLOREC_NO_DATA"] == "1"  # its shard and nothing else
        assert "volumes" not in svc[f"supernode-{i}"]  # the SuperNode never reads data
    server = svc["superexec-serverapp"]
    assert server["environment"]["FLOREC_NO_DATA"] == "1"
    assert [v for v in server["volumes"] if ":/data" in v] == []
    for name in ("superlink", "supernode-0", "supernode-1"):  # no run-time pip installs
        assert svc[name]["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def compose_config(files: list[str], env: dict[str, str]) -> dict:
    try:
        cmd = compose_command()
    except DockerError as err:
        pytest.skip(str(err))
    args = [a for f in files for a in ("-f", str(DEPLOY / f))]
    res = subprocess.run([*cmd, "-p", "florec-config-test", *args, "config"], cwd=DEPLOY,
                         env={**os.environ, **env}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)["services"]


@pytest.mark.parametrize("tls", [False, True])
def test_compose_client_puts_the_chosen_ports_and_images_everywhere(tls, tmp_path):
    env = {"SUPERLINK_PORT": "18000", "SUPERLINK_ADDRESS": "127.0.0.1:18000",
           "SUPERNODE_0_PORT": "19094", "SUPERNODE_1_PORT": "19095",
           "FLOREC_DATA_1": str(tmp_path), "FLOREC_CERTS": str(tmp_path / "certs"),
           **{f"{role.upper()}_IMAGE": img for role, img in images_of("florec").items()
              if role != "superexec"}}
    svc = compose_config(["compose.yml", *(["compose.tls.yml"] if tls else [])], env)
    link = svc["superlink"]["command"]
    assert link[link.index("--port") + 1] == "18000" and "18000" in str(svc["superlink"][
        "healthcheck"]["test"])
    assert svc["superlink"]["image"] == "florec/superlink:1.42.0"
    for i, port in enumerate(("19094", "19095")):
        node, app = svc[f"supernode-{i}"], svc[f"superexec-clientapp-{i}"]
        assert node["image"] == "florec/supernode:1.42.0"
        assert "127.0.0.1:18000" in node["command"] and port in node["command"]
        assert f"127.0.0.1:{port}" in app["command"]
    data = [str(v) for v in svc["superexec-clientapp-1"]["volumes"] if ":/data" in str(v)]
    assert data == [f"{tmp_path}:/data:ro"]
    if tls:
        assert str(tmp_path / "certs" / "supernode-1.key") in str(svc["supernode-1"]["volumes"])


def test_image_build_context_and_dockerfile_keep_data_and_keys_out():
    ignore = [line for line in (DEPLOY.parent / ".dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore == ["*", "!pyproject.toml"]  # the context holds pyproject.toml only
    text = (DEPLOY / "Dockerfile").read_text()
    copies = [line for line in text.splitlines() if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY pyproject.toml /tmp/pyproject.toml",
                      "COPY --from=requirements /tmp/requirements.txt /tmp/florec/requirements.txt"]
    users = [line for line in text.splitlines() if line.startswith("USER")]
    assert users[-1] == "USER 49999:49999"  # runs as Flower's unprivileged `app` user
    assert "rm -rf /tmp/florec /tmp/ca.pem" in text  # the proxy CA bundle is not kept


def test_node_data_cuts_one_shard_per_node(tmp_path):
    from florec.recdata.shard_files import load_shard

    folders = node_data(tmp_path / "shards", SMALL | {"num-nodes": 3})
    assert [f.name for f in folders] == ["node-0000", "node-0001", "node-0002"]
    assert [load_shard(f).partition_id for f in folders] == [0, 1, 2]


def test_no_engine_reason_is_one_line_when_docker_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = why_no_engine()
    assert reason and "\n" not in reason and "docker" in reason


def in_process_run(out: Path) -> dict:
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config(SMALL | {"out-dir": str(out)})
    return run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, out)


def test_results_check_accepts_the_simulation_schema_and_rejects_changes(tmp_path):
    in_process_run(tmp_path / "run")
    info = check_results(tmp_path / "run", tmp_path / "ref1")
    assert info["replies"] == [2, 2] and info["rounds"] == 2 and len(info["round_s"]) == 2
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    metric = next(k for k, v in saved["runs"][0]["metrics"].items() if isinstance(v, float))
    saved["runs"][0]["metrics"][metric] += 0.01
    (tmp_path / "run" / "results.json").write_text(json.dumps(saved))
    with pytest.raises(DockerError, match="metrics differ"):
        check_results(tmp_path / "run", tmp_path / "ref2")
    check_results(tmp_path / "run", tmp_path / "ref3", same_numbers=False)  # a dropped node
    del saved["runs"][0]["metrics"][metric]
    (tmp_path / "run" / "results.json").write_text(json.dumps(saved))
    with pytest.raises(DockerError, match="keys of metrics differ"):
        check_results(tmp_path / "run", tmp_path / "ref4", same_numbers=False)


@pytest.mark.slow
def test_docker_deployment_plain_tls_and_with_a_stopped_supernode(tmp_path):
    if os.environ.get("FLOREC_DOCKER_TEST") != "1":
        pytest.skip("Docker end-to-end test: set FLOREC_DOCKER_TEST=1 or run `make docker-test`")
    if reason := why_no_engine():
        pytest.skip(reason)
    from dockertest import main

    assert main(["--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_name = {s["scenario"]: s for s in summary["scenarios"]}
    assert by_name["plain"]["replies"] == by_name["tls"]["replies"] == [2, 2]
    assert by_name["kill"]["replies"] == [2, 1]
    assert by_name["tls"]["plain_http_refused"]


def test_bench_report_is_rebuilt_from_the_committed_run_folders(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "docker_deploy", DEPLOY.parent / "bench" / "docker_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    in_process_run(tmp_path / "sim")
    setting = "Flower simulation (florec sim)"
    run = bench.summarise(setting, tmp_path / "sim", {"wall_s": 3.0}, tmp_path / "out" / "runs")
    rows = [json.loads(r) for r in (tmp_path / "sim" / "rounds.jsonl").read_text().splitlines()]
    assert run["round_s"] == [r["seconds"] for r in rows] and run["replies"] == [2, 2]
    assert run["later_rounds_s_per_round"] == pytest.approx(rows[1]["seconds"])
    result = {"config": {"num-rounds": 2, "synthetic-users": 40, "synthetic-items": 60},
              "machine": "test", "engine": "20.10", "compose": "docker-compose",
              "build": {"base_s": 60.0, "cold_s": 200.0, "cached_s": 1.5, "image_bytes": 1.9e9,
                        "base_bytes": 4e8},
              "runs": [{**run, "up_s": 12.5, "test_ndcg@10": None}]}
    bench.write_report(tmp_path / "out", result)  # ndcg comes back from runs/simulation
    text = (tmp_path / "out" / "README.md").read_text()
    assert f"| {setting} | {rows[0]['seconds']:.1f} |" in text
    assert f"{run['test_ndcg@10']:.4f}" in text and "1.90 GB" in text and "12.5 s" in text
