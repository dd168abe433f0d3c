"""Build FloRec's images and run the compose topology for real (``make docker-test``).

Steps: start ``dockerd`` if no engine answers (and stop that PID at the end), build the image
(``deploy/Dockerfile``, on Flower's official base or on a Debian one from ``deploy/base.sh``),
bring up SuperLink, the ServerApp SuperExec and 2 SuperNodes with their ClientApp SuperExecs from
``compose.yml`` (host networking, everything on 127.0.0.1, free ports), each node with
its own data folder, and run FedAvg-MF on synthetic data: plain, with TLS and SuperNode
authentication (``compose.tls.yml``, certificates from ``certs.sh``), and with one SuperNode
container stopped mid-run. Every run's ``results.json`` is checked against the schema (and the
numbers) of the same run on the in-process grid. Works with ``docker compose`` (v2) and
``docker-compose`` (1.29). Run ``python deploy/dockertest.py --help`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
sys.path.insert(0, str(DEPLOY))

from docker_engine import (  # noqa: E402
    DockerError,
    Engine,
    audit_image,
    build_base,
    build_image,
    compose_command,
    default_torch_wheels,
    host_ca_file,
    image_size,
)
from docker_topology import ComposeDeployment, check_results, node_data  # noqa: E402

SMALL = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 60,
         "synthetic-interactions": 12, "dim": 8, "num-rounds": 2}
SCENARIOS = ("plain", "tls", "kill")
#: how long the ServerApp waits for replies in the "kill" scenario: long enough for a ClientApp
#: process to start on a loaded 2-core machine (tens of seconds), short enough to end the round
KILL_TIMEOUT_S = 120.0


def run_scenario(name: str, compose: list[str], image: str, base: str, work: Path,
                 run_config: dict, out: Path, echo: bool = True) -> dict:
    """One compose topology, one run; returns its timings and checks (raises on a failed one)."""
    tls, kill = name == "tls", name == "kill"
    data = node_data(work / f"shards-{name}", run_config | {"num-nodes": 2})
    dep = ComposeDeployment(f"florec-test-{name}-{os.getpid()}", compose, work / name, image,
                            base, data, tls=tls)
    cfg = run_config | ({"round-timeout-s": KILL_TIMEOUT_S} if kill else {})
    info: dict = {"scenario": name, "compose": " ".join(compose)}
    start = time.monotonic()
    try:
        info["up_s"] = dep.up()
        info["mounts"] = dep.check_mounts()
        if tls:
            info["plain_http_refused"] = not dep.superlink_up("http")
            assert info["plain_http_refused"], "the TLS SuperLink answered plain HTTP"
        code = dep.submit(cfg, name, stop_node_after_round=1 if kill else None, echo=echo)
        dep.fetch(name, out / name)
        if code != 0:
            raise DockerError(f"{name}: the run did not complete; logs in {dep.work}")
        info |= check_results(out / name, work / f"ref-{name}", same_numbers=not kill)
        if kill:
            from florec.sim.deploy_run import report_nodes

            info["report"] = report_nodes(dep, out / name)
            assert info["replies"] == [2, 1], f"replies per round {info['replies']}"
            assert any("partition 1" in line for line in info["report"]), info["report"]
    finally:
        dep.save_logs(out / name / "logs")
        dep.down()
    info["wall_s"] = time.monotonic() - start
    return info


def main(argv: list[str] | None = None) -> int:
    """Command line of ``make docker-test``; 0 if every scenario passed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", choices=("local", "official"), default="local",
                    help="local: Debian base from deploy/base.sh (no Docker Hub needed); "
                    "official: flwr/superexec, flwr/superlink, flwr/supernode")
    ap.add_argument("--ca", type=Path, default=host_ca_file(),
                    help="extra CA certificates pip trusts during builds (default: the CAs "
                    "this host added under /usr/local/share/ca-certificates)")
    ap.add_argument("--torch-wheels", type=Path, default=default_torch_wheels(),
                    help="a folder with a torch wheel served to the build (default: the "
                    "host's PIP_FIND_LINKS folder if it holds one)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--no-build", action="store_true",
                    help="use the images built before (base and florec-superexec:cpu)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "docker-test")
    ap.add_argument("--quiet", action="store_true", help="do not stream the runs' logs")
    args = ap.parse_args(argv)
    names = [s for s in args.scenarios.split(",") if s]
    if bad := set(names) - set(SCENARIOS):
        ap.error(f"unknown scenario(s) {sorted(bad)}; choose from {SCENARIOS}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"scenarios": []}
    start = time.monotonic()
    with Engine(args.out / "dockerd.log") as engine, \
            tempfile.TemporaryDirectory(prefix="florec-docker-") as tmp:
        compose = compose_command()
        summary |= {"engine": engine.version(), "started_dockerd": engine.proc is not None,
                    "compose": " ".join(compose)}
        base = "flwr" if args.base == "official" else "florec"
        image = "florec-superexec:cpu"
        if not args.no_build:
            base = build_base(args.ca) if args.base == "local" else base
            summary["build_s"] = build_image(image, base, args.ca, args.torch_wheels)
        summary["image_bytes"] = image_size(image)
        summary["image_audit"] = audit_image(image)
        for name in names:
            print(f"[docker-test] scenario {name} ({' '.join(compose)})", flush=True)
            summary["scenarios"].append(run_scenario(name, compose, image, base, Path(tmp),
                                                     SMALL, args.out, echo=not args.quiet))
            print(f"[docker-test] scenario {name}: passed", flush=True)
    summary["wall_s"] = time.monotonic() - start
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[docker-test] all {len(names)} scenarios passed in {summary['wall_s']:.0f} s; image "
          f"{image} {summary['image_bytes'] / 1e6:.0f} MB; summary in {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DockerError, AssertionError) as err:
        print(f"[docker-test] FAILED: {err}", file=sys.stderr)
        sys.exit(1)
