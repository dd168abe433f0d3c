"""One compose topology of ``make docker-test``: up, submit a run, stop a node, check, down.

:class:`ComposeDeployment` drives ``compose.yml`` (+ ``compose.tls.yml``), host networking on
127.0.0.1, with free ports, so it does not collide with anything else on the machine. It has the
attributes :func:`florec.sim.deploy_run.report_nodes` reads (``num_nodes``, ``node_ids``,
``exited``, ``describe``), so a dropped node is reported exactly as ``florec deploy local`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from docker_engine import DEPLOY, ROOT, DockerError, docker, images_of

CONNECTION = "florec-docker"
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_RUN_ID = re.compile(r"Successfully started run (\d+)")


def node_data(root: Path, run_config: dict[str, Any]) -> list[Path]:
    """Cut the run's split into one shard per node (``florec data shard``): their folders."""
    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.shard_files import write_shards

    shutil.rmtree(root, ignore_errors=True)
    return write_shards(parse_run_config(run_config), Path(root))


class ComposeDeployment:
    """SuperLink, ServerApp SuperExec and 2 SuperNodes (+ SuperExecs) in containers.

    Parameters
    ----------
    project : str
        Compose project name (containers, volumes); unique per deployment.
    compose : list of str
        The Compose client, ``["docker", "compose"]`` or ``["docker-compose"]``.
    work : Path
        Private folder: ``FLWR_HOME`` of the ``flwr`` CLI, certificates, logs.
    image : str
        The FloRec app image (ServerApp and ClientApp SuperExecs).
    base : str
        ``flwr`` (Flower's images) or the prefix of ``deploy/base.sh``'s images.
    data : list of Path
        Node ``i``'s shard folder, mounted read-only at ``/data`` of its ClientApp container only.
    tls : bool
        TLS, SuperNode and SuperExec authentication (``compose.tls.yml``).

    """

    num_nodes = 2

    def __init__(self, project: str, compose: list[str], work: Path, image: str, base: str,
                 data: list[Path], tls: bool = False) -> None:
        from florec.sim.flower import free_ports

        self.project, self.compose_cmd, self.tls = project, compose, tls
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port, *ports = free_ports(1 + self.num_nodes)
        self.files = ["compose.yml", *(["compose.tls.yml"] if tls else [])]
        images = images_of(base)
        self.env = {**os.environ, "SUPERLINK_HOST": "127.0.0.1", "SUPERLINK_PORT": str(self.port),
                    "SUPERLINK_ADDRESS": f"127.0.0.1:{self.port}",
                    "SUPERLINK_IMAGE": images["superlink"], "SUPERNODE_IMAGE": images["supernode"],
                    "FLOREC_BASE_IMAGE": images["superexec"], "FLOREC_IMAGE": image}
        for i, port in enumerate(ports):
            self.env |= {f"SUPERNODE_{i}_PORT": str(port), f"FLOREC_DATA_{i}": str(data[i])}
        self.certs = self._certs() if tls else None
        trust = f'root-certificates = "{self.certs / "ca.crt"}"' if self.certs else \
            "insecure = true"
        (self.work / "flwr").mkdir(exist_ok=True)
        (self.work / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{trust}\n')
        self.data = data
        self.registered: dict[int, int] = {}
        self.exited: dict[str, int] = {}
        self._ids: dict[int, int] = {}
        self.run_log = self.work / "flwr-run.log"

    def _certs(self) -> Path:
        from florec.sim.deploy_services import make_certs

        certs = make_certs(self.work / "certs", supernode_keys=self.num_nodes)
        for path in certs.iterdir():  # the containers' user (UID 49999) must read them
            if os.geteuid() == 0:
                os.chown(path, 49999, 49999)
            else:
                path.chmod(0o644)
        self.env["FLOREC_CERTS"] = str(certs)
        return certs

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the Compose client on this deployment's project and files."""
        files = [a for f in self.files for a in ("-f", str(DEPLOY / f))]
        res = subprocess.run([*self.compose_cmd, "-p", self.project, *files, *args],
                             env=self.env, cwd=DEPLOY, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise DockerError(f"{' '.join(self.compose_cmd)} {' '.join(args)} failed: "
                              f"{res.stderr.strip()[-1200:]}")
        return res

    def container(self, service: str) -> str:
        """Container ID of a service."""
        return self.compose("ps", "-q", service).stdout.strip()

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI with this deployment's connection as the default."""
        from florec.sim.flower import flower_env

        exe = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
        return subprocess.run([exe, *args], env=flower_env(self.work / "flwr"), cwd=ROOT,
                              capture_output=True, text=True)

    def superlink_up(self, scheme: str = "") -> bool:
        """Whether the SuperLink answers ``/health`` on 127.0.0.1 (https under TLS)."""
        from florec.sim.flower import superlink_healthy

        return superlink_healthy(self.port, self.certs / "ca.crt" if self.certs else None, scheme)

    def _wait(self, what: str, ready: Any, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise DockerError(f"{what} not ready after {timeout_s:.0f} s; logs: "
                                  f"{self.compose('logs', '--tail', '20', check=False).stdout}")
            time.sleep(0.5)

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: the SuperNode ID the SuperLink gives this key."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(res.stdout[res.stdout.index("{"):])["node-id"])
        except (ValueError, KeyError) as err:
            raise DockerError(f"flwr supernode register failed: {res.stdout[-300:]}") from err

    def up(self) -> float:
        """Start every service; seconds until all SuperNodes have connected."""
        start = time.monotonic()
        if self.certs:  # keys are registered before their SuperNodes may connect
            self.compose("up", "-d", "superlink")
            self._wait("the SuperLink", self.superlink_up)
            self.registered = {i: self.register(self.certs / f"supernode-{i}.pub")
                               for i in range(self.num_nodes)}
        self.compose("up", "-d")
        self._wait("the SuperLink", self.superlink_up)
        self._wait("the SuperNodes", lambda: None not in self.node_ids().values())
        return time.monotonic() - start

    def node_ids(self) -> dict[int, int | None]:
        """SuperNode ID of each partition, from its container's log (``None`` until known)."""
        for i in range(self.num_nodes):
            if i not in self._ids:
                logs = self.compose("logs", "--no-color", f"supernode-{i}", check=False).stdout
                if m := _NODE_ID.search(logs):
                    self._ids[i] = int(m.group(1))
        return {i: self._ids.get(i) for i in range(self.num_nodes)}

    def describe(self, name: str) -> str:
        """``supernode-1 (SuperNode ID ...)`` for SuperNodes, the name otherwise."""
        node = int(name.rsplit("-", 1)[1]) if name.startswith("supernode-") else None
        return f"{name} (SuperNode ID {self._ids[node]})" if node in self._ids else name

    def check_mounts(self) -> dict[str, Any]:
        """Each ClientApp container runs as UID 49999 and sees its own node's shard only."""
        seen = {}
        for i, folder in enumerate(self.data):
            cid = self.container(f"superexec-clientapp-{i}")
            out = docker("exec", cid, "sh", "-c", "id -u; ls -A /data").stdout.split()
            manifest = docker("exec", cid, "cat", "/data/shard.json").stdout
            if out[0] != "49999" or out[1:] != sorted(p.name for p in folder.iterdir()) \
                    or manifest != (folder / "shard.json").read_text():
                raise DockerError(f"node {i}'s ClientApp container: uid {out[0]}, /data {out[1:]}"
                                  f" is not the shard {folder}")
            seen[f"node-{i}"] = out[1:]
        return seen

    def rounds_done(self, name: str) -> int:
        """Lines of ``rounds.jsonl`` the ServerApp has written for the run ``name``."""
        res = docker("exec", self.container("superexec-serverapp"), "sh", "-c",
                     f"cat /app/results/{name}/rounds.jsonl 2>/dev/null | wc -l", check=False)
        return int(res.stdout.strip() or 0)

    def stop_node(self, i: int) -> None:
        """Stop node ``i``'s SuperNode and ClientApp containers at once (SIGKILL, no grace)."""
        cid = self.container(f"supernode-{i}")
        self.compose("stop", "-t", "0", f"supernode-{i}", f"superexec-clientapp-{i}")
        code = docker("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip()
        self.exited[f"supernode-{i}"] = int(code)
        print(f"[docker-test] stopped {self.describe(f'supernode-{i}')} (exit code {code})",
              flush=True)

    def submit(self, run_config: dict[str, Any], name: str, stop_node_after_round: int | None
               = None, echo: bool = True) -> int:
        """``flwr run . --stream`` into ``/app/results/<name>``; 0 if the run completed.

        With ``stop_node_after_round=r`` node 1 is stopped once round ``r`` is written.
        """
        from florec.sim.flower import flower_env
        from florec.sim.flower_config import toml_value

        cfg = run_config | {"num-nodes": self.num_nodes, "out-dir": f"/app/results/{name}"}
        overrides = " ".join(f"{k}={toml_value(v)}" for k, v in cfg.items())
        exe = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
        run_id: list[int] = []
        with self.run_log.open("w") as log:
            proc = subprocess.Popen([exe, "run", str(ROOT), CONNECTION, "--stream",
                                     "--run-config", overrides], env=flower_env(self.work / "flwr"),
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if echo:
                        sys.stdout.write(line)
                    if not run_id and (m := _RUN_ID.search(line)):
                        run_id.append(int(m.group(1)))

            thread = threading.Thread(target=pump, daemon=True)
            thread.start()
            while proc.poll() is None:
                if stop_node_after_round and not self.exited \
                        and self.rounds_done(name) >= stop_node_after_round:
                    self.stop_node(1)
                time.sleep(0.5)
            thread.join(timeout=10)
        if proc.returncode != 0 or not run_id:
            return proc.returncode or 1
        res = self.flwr("list", "--run-id", str(run_id[0]), "--format", "json")
        try:  # `flwr run --stream` exits 0 whatever became of the run: ask the SuperLink
            status = json.loads(res.stdout[res.stdout.index("{"):])["runs"][0]["status"]
        except (ValueError, KeyError, IndexError):
            print(f"[docker-test] run {run_id[0]}: no status from `flwr list` "
                  f"({(res.stderr or res.stdout).strip()[-200:]!r})", flush=True)
            return 1
        print(f"[docker-test] run {run_id[0]}: {status}", flush=True)
        return 0 if status == "finished:completed" else 1

    def fetch(self, name: str, dest: Path) -> Path:
        """Copy ``/app/results/<name>`` out of the ServerApp's container (its results volume)."""
        dest = Path(dest)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        docker("cp", f"{self.container('superexec-serverapp')}:/app/results/{name}", str(dest))
        return dest

    def save_logs(self, dest: Path) -> None:
        """Every container's log (time-stamped) and the ``flwr run`` output into ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        logs = self.compose("logs", "--no-color", "--timestamps", check=False)
        (dest / "compose.log").write_text(logs.stdout + logs.stderr)
        if self.run_log.exists():
            shutil.copy(self.run_log, dest / "flwr-run.log")

    def down(self) -> None:
        """Remove the containers and the volumes of this project."""
        self.compose("down", "-v", "-t", "5", "--remove-orphans", check=False)


def check_results(out: Path, ref_dir: Path, same_numbers: bool = True) -> dict[str, Any]:
    """Compare a deployed run's results folder with the same run on the in-process grid.

    The in-process grid (``florec.sim.local_grid``) is what tests/sim checks against Flower's
    simulation, so equal keys (and, unless a node was dropped, equal metrics to 1e-6) mean the
    containers produce the simulation's schema. Raises :class:`DockerError` on a difference.
    """
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    saved = json.loads((out / "results.json").read_text())
    cfg = parse_run_config({k: v for k, v in saved["config"].items() if k != "out-dir"})
    local = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes), cfg, ref_dir)
    ref = json.loads((ref_dir / "results.json").read_text())
    run, ref_run = saved["runs"][0], ref["runs"][0]
    for what, a, b in [("results.json", saved, ref), ("config", saved["config"], ref["config"]),
                       ("env", saved["env"], ref["env"]), ("runs[0]", run, ref_run),
                       ("metrics", run["metrics"], ref_run["metrics"])]:
        if set(a) != set(b):
            raise DockerError(f"{out}: keys of {what} differ from the simulation's: "
                              f"{sorted(set(a) ^ set(b))}")
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    if saved["status"] != "finished" or len(rows) != cfg.num_rounds:
        raise DockerError(f"{out}: status {saved['status']}, {len(rows)} rounds")
    if same_numbers:
        diff = {k: (run["metrics"][k], v) for k, v in local["metrics"].items()
                if isinstance(v, float) and abs(run["metrics"][k] - v) > 1e-6}
        if diff:
            raise DockerError(f"{out}: metrics differ from the in-process run: {diff}")
    return {"status": saved["status"], "rounds": len(rows),
            "replies": [r["train"]["num-replies"] for r in rows],
            "round_s": [r["seconds"] for r in rows], "metrics": run["metrics"]}
