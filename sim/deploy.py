"""``florec deploy local``: the deployment topology as real processes on 127.0.0.1.

One ``flower-superlink`` (``--isolation process``; one HTTP port serves the Fleet, Control and
Runtime APIs), one ``flower-superexec`` that runs the ServerApp, and per node a
``flower-supernode`` (``--node-config "partition-id=i num-partitions=N"``) with its own
``flower-superexec`` for the ClientApp: the topology of ``deploy/compose.yml`` without Docker.
The run is submitted with ``flwr run . <connection>`` through a connection written into a private
``FLWR_HOME``. Every process is ours and is stopped by PID, also on Ctrl-C and errors; each one's
output goes, line by line with a wall-clock stamp, to ``<log_dir>/<name>.log``.

Data ownership: the SuperLink, the ServerApp SuperExec and ``flwr run`` run with
``FLOREC_NO_DATA=1`` (any attempt to open a dataset or split fails), and with ``shards`` (a
``florec data shard`` folder) node ``i`` gets ``data-dir=<shards>/node-000i`` and runs with
``FLOREC_NO_DATA=1`` too, so it can read nothing but its own shard.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from florec.recdata.errors import FloRecError
from florec.recdata.shard import NO_DATA_ENV
from florec.recdata.shard_files import shard_dir
from florec.sim.deploy_services import Service, flower_exe
from florec.sim.flower import (
    PROJECT_ROOT,
    flower_env,
    free_ports,
    superlink_healthy,
)
from florec.sim.flower_config import toml_value
from florec.sim.teardown import terminate

CONNECTION = "florec-deploy"
#: seconds between a SuperExec's polls for a task to launch (Flower's
#: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``): Flower's default of 1 s adds half a second on average
#: to every ClientApp message; a poll is one local HTTP request
SUPEREXEC_POLL_S = 0.1


class LoopbackDeployment:
    """SuperLink, server SuperExec and ``num_nodes`` SuperNodes (+ SuperExecs) on 127.0.0.1.

    Parameters
    ----------
    num_nodes : int
        SuperNodes to start; node ``i`` gets ``partition-id=i num-partitions=num_nodes``.
    log_dir : Path
        Where each process's log goes.
    certs : Path, optional
        A folder made by ``deploy/certs.sh``: TLS on every API (``ca.crt``, ``server.pem``,
        ``server.key``). Without it everything runs ``--insecure``.
    auth : bool
        SuperNode authentication (``supernode-<i>.key/.pub`` registered with ``flwr supernode
        register``) and SuperExec authentication (``superexec.secret``); needs ``certs``.
    data_dir : str
        ``data-dir`` of every node's config (empty: not set); ignored with ``shards``.
    shards : Path, optional
        A ``florec data shard`` folder: node ``i`` reads only ``shards/node-000i``.
    superexec_poll_s : float
        How often each SuperExec asks for a task to launch (a ClientApp or the ServerApp).

    """

    def __init__(self, num_nodes: int, log_dir: Path, certs: Path | None = None,
                 auth: bool = False, data_dir: str = "", shards: Path | None = None,
                 superexec_poll_s: float = SUPEREXEC_POLL_S) -> None:
        if auth and certs is None:
            raise FloRecError("authentication needs TLS: add --tls")
        need = ["ca.crt", "server.pem", "server.key"] if certs else []
        need += ["superexec.secret", *(f"supernode-{i}.{e}" for i in range(num_nodes)
                                       for e in ("key", "pub"))] if auth else []
        if missing := [f for f in need if not (Path(certs) / f).exists()]:
            raise FloRecError(f"{certs} lacks {', '.join(missing[:3])}; make it with "
                              f"deploy/certs.sh -o {certs} -k {num_nodes} -s")
        self.num_nodes, self.certs, self.auth, self.data_dir = num_nodes, certs, auth, data_dir
        self.shards = None if shards is None else Path(shards).resolve()
        self.superexec_poll_s = superexec_poll_s
        self.log_dir = Path(log_dir)
        self.work = Path(tempfile.mkdtemp(prefix="florec-deploy-"))
        self.port, *self.node_ports = free_ports(num_nodes + 1)
        self.services: dict[str, Service] = {}
        self.registered: dict[int, int] = {}
        self.exited: dict[str, int] = {}

    def _start(self, name: str, cmd: list[str], home: str, echo: bool = False) -> Service:
        if self.auth and name != "flwr-run":  # every SuperLink, SuperNode and SuperExec
            cmd = [*cmd, "--superexec-auth-secret-file", str(self.certs / "superexec.secret")]
        env = flower_env(self.work / home)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = repr(float(self.superexec_poll_s))
        if not home.startswith("node-") or self.shards is not None:
            env[NO_DATA_ENV] = "1"  # the server side never opens data; a node only its shard
        svc = Service(name, cmd, env, self.log_dir, echo)
        self.services[name] = svc
        return svc

    def _ca(self) -> list[str]:
        return ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else \
            ["--insecure"]

    def _wait(self, what: str, ready: Any, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, s in self.services.items() if s.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited" if dead else f"not ready after {timeout_s:.0f} s"
                raise FloRecError(f"{what}: {why}; see the logs in {self.log_dir}")
            time.sleep(0.2)

    def superlink_up(self, scheme: str = "") -> bool:
        """Whether the SuperLink answers ``/health`` (https with our CA under TLS)."""
        return superlink_healthy(self.port, self.certs / "ca.crt" if self.certs else None, scheme)

    def start(self) -> None:
        """Start everything and wait until every SuperNode is connected."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        link, certs = f"127.0.0.1:{self.port}", self.certs
        tls = ["--insecure"] if certs is None else [
            "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
            str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key")]
        self._start("superlink", [flower_exe("flower-superlink"), *tls, "--isolation", "process",
                                  "--host", "127.0.0.1", "--port", str(self.port),
                                  *(["--enable-supernode-auth"] if self.auth else [])],
                    "superlink")
        (self.work / "flwr").mkdir(parents=True, exist_ok=True)
        trust = f'root-certificates = "{certs / "ca.crt"}"' if certs else "insecure = true"
        (self.work / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{link}"\n{trust}\n')
        if self.auth:  # keys are registered before their SuperNodes may connect
            self._wait("the SuperLink", self.superlink_up)
            self.registered = {i: self.register(certs / f"supernode-{i}.pub")
                               for i in range(self.num_nodes)}
        # the others start while the SuperLink is still starting up; they retry until it is up
        self._start("superexec-server", [flower_exe("flower-superexec"), *self._ca(),
                                         "--runtime-api-address", link], "server")
        for i, port in enumerate(self.node_ports):
            node_config = f"partition-id={i} num-partitions={self.num_nodes}"
            data_dir = str(shard_dir(self.shards, i)) if self.shards else self.data_dir
            if data_dir:
                node_config += f" data-dir={toml_value(data_dir)}"
            key = ["--auth-supernode-private-key", str(certs / f"supernode-{i}.key")] \
                if self.auth else []
            self._start(f"supernode-{i}", [
                flower_exe("flower-supernode"), *self._ca(), *key, "--superlink", link,
                "--isolation", "process", "--host", "127.0.0.1", "--port", str(port),
                "--node-config", node_config], f"node-{i}")
            self._start(f"superexec-{i}", [flower_exe("flower-superexec"), "--insecure",
                                           "--runtime-api-address", f"127.0.0.1:{port}"],
                        f"node-{i}")
        self._wait("the SuperLink", self.superlink_up)
        self._wait("the SuperNodes", lambda: None not in self.node_ids().values())

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command with this deployment's connection as the default."""
        return subprocess.run([flower_exe("flwr"), *args], env=flower_env(self.work / "flwr"),
                              cwd=PROJECT_ROOT, capture_output=True, text=True)

    def register(self, public_key: Path) -> int:
        """Register a SuperNode's public key (``flwr supernode register``); its node ID."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(res.stdout[res.stdout.index("{"):])["node-id"])
        except (ValueError, KeyError) as err:
            raise FloRecError(f"flwr supernode register {public_key} failed: "
                              f"{(res.stderr or res.stdout).strip()[-300:]}") from err

    def node_ids(self) -> dict[int, int | None]:
        """SuperNode ID of each partition (``None`` until the node has connected)."""
        return {i: self.services[f"supernode-{i}"].node_id for i in range(self.num_nodes)}

    def submit(self, run_config: dict[str, Any], echo: bool = True,
               app: Path = PROJECT_ROOT) -> int:
        """``flwr run <app> <connection> --stream``: wait for the run, report nodes that die.

        ``app`` is the Flower app folder to submit (FloRec itself by default; the bench submits
        ``bench/deploy-floor`` to the same SuperLink and SuperNodes).

        Returns
        -------
        int
            0 if the run finished as completed, else non-zero.

        """
        cfg = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        run = self._start("flwr-run", [flower_exe("flwr"), "run", str(app), CONNECTION,
                                       "--stream", "--run-config", cfg], "flwr", echo)
        while run.proc.poll() is None:
            self._check_exits()
            time.sleep(0.5)
        run.thread.join(timeout=5)
        self._check_exits()
        if run.proc.returncode != 0 or run.node_id is None:
            return run.proc.returncode or 1
        # `flwr run --stream` exits 0 whatever became of the run: ask the SuperLink
        res = self.flwr("list", "--run-id", str(run.node_id), "--format", "json")
        try:
            info = json.loads(res.stdout[res.stdout.index("{"):])["runs"][0]
        except (ValueError, KeyError, IndexError):
            print(f"[florec deploy] cannot read the status of run {run.node_id}: "
                  f"{(res.stderr or res.stdout).strip()[-300:]}", flush=True)
            return 1
        if info["status"] != "finished:completed":
            print(f"[florec deploy] run {run.node_id} is {info['status']}: "
                  f"{info.get('status-details', '')}", flush=True)
            return 1
        return 0

    def describe(self, name: str) -> str:
        """``supernode-1 (SuperNode ID ...)``, or just the name of other processes."""
        node_id = self.services[name].node_id if name.startswith("supernode-") else None
        return f"{name} (SuperNode ID {node_id})" if node_id else name

    def _check_exits(self) -> None:
        for name, svc in self.services.items():
            if name.startswith("super") and name not in self.exited and svc.proc.poll() is not None:
                self.exited[name] = svc.proc.returncode
                print(f"[florec deploy] {self.describe(name)} exited with code "
                      f"{svc.proc.returncode}; see {svc.log_path}", flush=True)

    def kill_node(self, i: int, hard: bool = True) -> None:
        """Kill node ``i`` (its SuperNode and ClientApp SuperExec trees): a crash if ``hard``."""
        for name in (f"supernode-{i}", f"superexec-{i}"):
            self.services[name].tree(signal.SIGKILL if hard else signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every process we started (SIGTERM, then SIGKILL after ``grace_s``), by PID."""
        procs = [p for svc in reversed(self.services.values()) for p in svc.tree(signal.SIGTERM)]
        terminate(procs, grace_s)
        for svc in self.services.values():
            svc.proc.poll()
            svc.thread.join(timeout=2)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> LoopbackDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
