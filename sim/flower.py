"""Run the Flower app with `flwr run`: environment, a local SuperLink we own, and clean teardown."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from florec.recdata.errors import FloRecError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    return env


def toml_value(value: Any) -> str:
    """A Python value as a TOML literal, as `flwr run -c` expects."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (values in TOML, bare words as strings) -> dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        for item in pair.split():
            key, sep, raw = item.partition("=")
            if not sep:
                raise FloRecError(f"override '{item}' is not key=value; write e.g. -c 'lr=0.01'")
            try:
                out[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                out[key] = raw
    return out


def _superlink_healthy(port: str) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success
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


def terminate(procs: list, grace_s: float = 10.0) -> None:
    """SIGTERM ``procs`` (psutil processes we started), then SIGKILL those left after grace."""
    import psutil

    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_process_tree(pid: int, grace_s: float = 10.0) -> None:
    """Terminate a process we started and all its descendants (by PID)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    terminate([root, *root.children(recursive=True)], grace_s)


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
        while not _superlink_healthy(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise FloRecError(f"the local SuperLink did not start; see {self.log_path}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the SuperLink we started and every process it started, by PID."""
        if self.proc is None:
            return
        stop_process_tree(self.proc.pid)
        self.proc.wait(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flwr_run(
    overrides: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    app_dir: Path = PROJECT_ROOT,
    env: dict[str, str] | None = None,
) -> int:
    """Submit the app to a SuperLink of its own with `flwr run --stream` and wait.

    Each call gets a fresh FLWR_HOME under the project's ``.flwr/runs/`` (the SuperLink's log
    and the installed app live there); it is removed after a clean run and kept otherwise.

    Returns
    -------
    int
        The exit code of ``flwr run``.
    """
    env = dict(env or flower_env())
    base = Path(env["FLWR_HOME"]) / "runs"
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sim-", dir=base))
    env["FLWR_HOME"] = str(home)
    run_config = " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())
    fed = (f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client:g} "
           f"client-resources-num-gpus={gpus_per_client:g}")
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    cmd = [flwr, "run", str(app_dir), CONNECTION, "--stream", "--federation-config", fed]
    if run_config:
        cmd += ["--run-config", run_config]
    with LocalSuperLink(env):
        code = subprocess.run(cmd, env=env, cwd=app_dir).returncode
    if code == 0:
        shutil.rmtree(home, ignore_errors=True)
    return code
