"""deploy/: compose files, overlays, Dockerfile and certs.sh, checked without a Docker engine.

Every command line in the compose files is parsed with the installed Flower's own argument
parsers, so a flag that Flower 1.42 dropped or renamed fails here.
"""

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink_parser
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode_parser

from florec.sim.deploy_services import make_certs

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FLWR = metadata.version("flwr")
DEPRECATED = {"--fleet-api-address", "--fleet-api-type", "--control-api-address",
              "--serverappio-api-address", "--clientappio-api-address", "--appio-api-address",
              "--plugin-type", "--auth-list-public-keys", "--auth-supernode-public-key",
              "--simulation", "--executor"}


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def defaults(args: list[str]) -> list[str]:
    """Compose interpolation with every variable unset: ``${VAR:-default}`` -> ``default``."""
    return [re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(a)) for a in args]


def merged(*names: str) -> dict:
    """Services after compose's override rules for the keys we use (command replaces)."""
    services: dict = {}
    for name in names:
        for svc, spec in load(name)["services"].items():
            services.setdefault(svc, {}).update(spec)
    return services


def parse(parser, args: list[str]):
    try:
        return parser().parse_args(defaults(args))
    except SystemExit as err:  # argparse exits on an unknown flag
        raise AssertionError(f"flags rejected by flwr {FLWR}: {args}") from err


def check_topology(services: dict, tls: bool) -> None:
    nodes = sorted(s for s in services if re.fullmatch(r"supernode-\d+", s))
    n = len(nodes)
    assert n >= 2
    assert set(services) == {"superlink-state", "superlink", "superexec-serverapp", *nodes,
                             *(f"superexec-clientapp-{i}" for i in range(n))}
    link = parse(superlink_parser, services["superlink"]["command"])
    assert link.isolation == "process" and not link.simulation
    assert link.database.startswith("/app/state/") and link.host == "127.0.0.1"
    assert link.insecure is not tls and link.enable_supernode_auth is tls
    assert (link.ssl_certfile is not None) is tls
    link_port = link.port
    server = parse(superexec_parser, services["superexec-serverapp"]["command"])
    assert server.runtime_api_address == f"127.0.0.1:{link_port}"  # host networking
    assert (server.root_certificates is not None) is tls
    for i, node in enumerate(nodes):
        args = parse(supernode_parser, services[node]["command"])
        assert node == f"supernode-{i}"
        assert args.isolation == "process" and args.superlink == f"127.0.0.1:{link_port}"
        assert parse_config_args([args.node_config]) == {
            "partition-id": i, "num-partitions": n, "data-dir": "/data"}
        assert (args.root_certificates is not None) is tls
        assert (args.auth_supernode_private_key is not None) is tls
        app = parse(superexec_parser, services[f"superexec-clientapp-{i}"]["command"])
        assert app.runtime_api_address == f"127.0.0.1:{args.port}"  # its own SuperNode
        assert args.host == "127.0.0.1" and args.port == 9094 + i  # one port per node
        if tls:
            assert app.superexec_auth_secret_file == server.superexec_auth_secret_file \
                == args.superexec_auth_secret_file == link.superexec_auth_secret_file
    for spec in services.values():
        assert not DEPRECATED & set(map(str, spec.get("command", [])))


def test_compose_starts_one_superlink_and_a_supernode_with_a_superexec_per_partition():
    compose = load("compose.yml")
    services = compose["services"]
    check_topology(services, tls=False)
    assert defaults([services["superlink"]["image"], services["superlink-state"]["image"]]) \
        == [f"flwr/superlink:{FLWR}"] * 2
    assert "superlink-state:/app/state" in services["superlink"]["volumes"]
    assert set(compose["volumes"]) == {"superlink-state", "results"}
    assert "ports" not in services["superlink"]  # host networking: nothing to publish
    assert all(spec["network_mode"] == ("none" if name == "superlink-state" else "host")
               for name, spec in services.items())
    for name, spec in services.items():
        if name.startswith("supernode-"):
            assert defaults([spec["image"]]) == [f"flwr/supernode:{FLWR}"]
        if name.startswith("superexec-"):
            assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
            assert spec["shm_size"] and spec["image"].startswith("${FLOREC_IMAGE:-florec-")
        if name.startswith(("superlink", "supernode-")) and name != "superlink-state":
            assert "/health" in " ".join(spec["healthcheck"]["test"])
    assert "/app/results" in " ".join(services["superexec-serverapp"]["volumes"])


def test_tls_overlay_turns_on_tls_and_authentication_everywhere():
    services = merged("compose.yml", "compose.tls.yml")
    check_topology(services, tls=True)
    assert "https://" in " ".join(services["superlink"]["healthcheck"]["test"])
    for i in range(2):  # each node mounts only its own private key
        keys = [v for v in services[f"supernode-{i}"]["volumes"] if ".key" in v]
        assert defaults(keys) == [f"./certs/supernode-{i}.key:/app/certs/supernode.key:ro"]


def test_gpu_overlay_reserves_a_gpu_for_each_clientapp():
    services = merged("compose.yml", "compose.gpu.yml")
    for i in range(2):
        spec = services[f"superexec-clientapp-{i}"]
        device = spec["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "cu1" in spec["build"]["args"]["TORCH_INDEX"]


def test_dockerfile_builds_on_the_superexec_image_of_the_installed_flower():
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={FLWR}" in text and "FROM ${BASE_IMAGE}" in text
    assert "ARG BASE_IMAGE=flwr/superexec:${FLWR_VERSION}" in text
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert 'ENTRYPOINT ["flower-superexec"]' in text


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.parametrize("files", [["compose.yml"], ["compose.yml", "compose.tls.yml"],
                                   ["compose.yml", "compose.gpu.yml"]])
def test_docker_compose_config_accepts_the_files(files):
    if not docker_compose_available():
        pytest.skip("no `docker compose` client on this machine")
    cmd = ["docker", "compose", *(a for f in files for a in ("-f", str(DEPLOY / f))), "config",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=DEPLOY)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_certs_script_makes_a_ca_a_server_certificate_and_node_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    certs = make_certs(tmp_path / "certs", supernode_keys=2, names=("10.1.2.3", "fl.example"))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"),
                             str(certs / "server.pem")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    cert = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink", "fl.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1",
                                                                           "10.1.2.3"}
    for i in range(2):  # the formats flower-supernode and `flwr supernode register` read
        load_ssh_private_key((certs / f"supernode-{i}.key").read_bytes(), None)
        assert try_load_public_key(certs / f"supernode-{i}.pub")
    assert len((certs / "superexec.secret").read_bytes()) == 64
    assert oct((certs / "server.key").stat().st_mode)[-3:] == "600"
