"""Run the Flower app with `flwr run`: environment, a local SuperLink we own, and clean teardown.

Teardown is by PID and by session: the SuperLink starts in a session of its own, so every
process under it (SuperExec, ``flwr-simulation``, the Ray head and workers), even one that its
parent left behind, is found and stopped (:mod:`florec.sim.teardown`, whose
:func:`~florec.sim.teardown.handle_signals` makes SIGTERM and SIGHUP stop a command as SIGINT does).
A run that did not finish as ``completed`` (the SuperLink's own status: ``flwr run --stream``
exits 0 either way) raises :class:`RunFailed` with its one-line cause.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError, FloRecError
from florec.sim.flower_config import federation_config, toml_value
from florec.sim.teardown import stop_process_tree

PROJECT_ROOT = Path(__file__).resolve().parent.parent


#: Ray passes task arguments and results up to this size inline over gRPC instead of through
#: its shared-memory object store (Ray's default is 100 KiB); a FedAvg-MF message on ML-1M is
#: about 1 MB, and an ML-1M round under `flwr run` was 0.8-0.9x as long inline (docs/scale.md).
#: Ray keeps this below its 10 MiB limit of inlined task arguments; set the variable to override.
RAY_DIRECT_CALL_BYTES = 8 << 20


class RunFailed(FloRecError):
    """A Flower run ended in another state than ``finished:completed`` (the message says why)."""


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for Flower commands: project-local FLWR_HOME, no telemetry, no installs."""
    env = os.environ.copy()
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home or env.get("FLWR_HOME") or PROJECT_ROOT / ".flwr")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("RAY_max_direct_call_object_size", str(RAY_DIRECT_CALL_BYTES))
    return env


def superlink_healthy(port: int | str, ca_cert: Path | None = None, scheme: str = "") -> bool:
    """Whether the SuperLink on 127.0.0.1:``port`` answers ``/health``.

    Under TLS (``ca_cert`` given) the request is https, verified with that CA; ``scheme`` forces
    one (e.g. ``http`` to check that a TLS SuperLink refuses plain requests).
    """
    import httpx

    scheme = scheme or ("https" if ca_cert else "http")
    try:
        return httpx.get(f"{scheme}://127.0.0.1:{port}/health",
                         verify=str(ca_cert) if ca_cert else False, timeout=2.0).is_success
    except httpx.HTTPError:
        return False


def free_ports(k: int) -> list[int]:
    """``k`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(k)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


CONNECTION = "florec-sim"


class LocalSuperLink:
    """A simulation SuperLink of our own on a free 127.0.0.1 port, started and stopped by PID.

    It never reuses a SuperLink that happens to run on Flower's default port: that one would
    run our nodes with another process's environment (data folder, cache) and may stop at any
    time. The connection is written to ``FLWR_HOME/config.toml`` of ``env`` (give each run its
    own FLWR_HOME, see :func:`flwr_run`).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.port = env, str(free_ports(1)[0])
        self.proc: subprocess.Popen | None = None
        self.home = Path(env["FLWR_HOME"])
        self.log_path = self.home / "superlink.log"

    def __enter__(self) -> LocalSuperLink:
        exe = shutil.which("flower-superlink", path=str(Path(sys.executable).parent)) \
            or shutil.which("flower-superlink")
        if exe is None:
            raise FloRecError("flower-superlink is not installed; run `make venv`")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        cmd = [exe, "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", self.port, "--log-file", str(self.log_path)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not superlink_healthy(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise FloRecError(f"the local SuperLink did not start; see {self.log_path}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the SuperLink we started and every process it started, by PID."""
        if self.proc is None:
            return
        stop_process_tree(self.proc.pid, session=True)
        self.proc.wait(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_status(env: dict[str, str]) -> tuple[str, str]:
    """Status and details of the latest run on the SuperLink of ``env`` (``flwr list``).

    Returns
    -------
    (str, str)
        E.g. ``("finished:completed", "")`` or ``("finished:failed", "Simulation failed with
        exception: ...")``; ``("unknown", why)`` if the SuperLink cannot tell.

    """
    res = subprocess.run([_flwr(), "list", CONNECTION, "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=120)
    try:
        runs = json.loads(res.stdout[res.stdout.index("{"):])["runs"]
        last = max(runs, key=lambda r: int(r["run-id"]))
    except (ValueError, KeyError, TypeError):
        return "unknown", " ".join((res.stderr or res.stdout).split())[-300:]
    return str(last["status"]), " ".join(str(last.get("status-details") or "").split())


def _flwr() -> str:
    return shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"


def flwr_run(
    overrides: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    app_dir: Path = PROJECT_ROOT,
    env: dict[str, str] | None = None,
    ray_address: str | None = None,
) -> None:
    """Submit the app to a SuperLink of its own with `flwr run --stream` and wait for it.

    Each call gets a fresh FLWR_HOME under the project's ``.flwr/runs/`` (the SuperLink's log
    and the installed app live there); it is kept after a failed run (the log names it) and
    removed otherwise. On an interrupt every process is stopped before :class:`Interrupted`
    propagates. With ``ray_address`` (``HOST:PORT`` of a Ray head) the simulation joins that
    cluster instead of starting a Ray of its own (:mod:`florec.sim.ray_cluster`); stopping the
    run then stops only its driver and actors, never the cluster.

    Raises
    ------
    RunFailed
        ``flwr run`` failed, or the run ended other than ``finished:completed``: the message
        is the run's status and its cause (the ServerApp's exception).

    """
    if cpus_per_client < 1 or cpus_per_client != int(cpus_per_client) or gpus_per_client < 0:
        raise ConfigError(f"cpus per client {cpus_per_client:g} / gpus per client "
                          f"{gpus_per_client:g}: Flower 1.42 takes whole CPUs per client (its "
                          "client-resources-num-cpus is an unsigned integer) and a GPU share >= "
                          "0; give --cpus-per-client 1 or more and e.g. --gpus-per-client 0.25")
    env = dict(env or flower_env())
    if ray_address:
        from florec.sim.ray_cluster import check_ray_address, cluster_env

        env = cluster_env(env, check_ray_address(ray_address))
    base = Path(env["FLWR_HOME"]) / "runs"
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sim-", dir=base))
    env["FLWR_HOME"] = str(home)
    run_config = " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())
    fed = federation_config(num_supernodes, cpus_per_client, gpus_per_client,
                            None if ray_address else os.cpu_count())
    cmd = [_flwr(), "run", str(app_dir), CONNECTION, "--stream", "--federation-config", fed]
    if run_config:
        cmd += ["--run-config", run_config]
    try:
        with LocalSuperLink(env) as link:
            code = subprocess.run(cmd, env=env, cwd=app_dir).returncode
            status, details = run_status(env)
    except KeyboardInterrupt:
        shutil.rmtree(home, ignore_errors=True)
        raise
    if status == "finished:completed" and code == 0:
        shutil.rmtree(home, ignore_errors=True)
        return
    if status.startswith("finished:"):
        cause = details.removeprefix("Simulation failed with exception: ") or "no details"
        if "heartbeat" in cause.lower():
            from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

            limit = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL
            cause += (f" (the run's process sent none for {limit} s: it died, or one call held "
                      "Python's GIL that long)")
        raise RunFailed(f"the run is {status}: {cause} (SuperLink log: {link.log_path})")
    raise RunFailed(f"flwr run exited with code {code} and the run is {status} ({details}); "
                    f"see the log above and {link.log_path}")
