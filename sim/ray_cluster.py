"""Run a simulation on an existing Ray cluster instead of a Ray of its own.

Flower 1.42 has no federation-config key for a Ray address: its ``init-args`` carry only
``num-cpus``, ``num-gpus``, ``logging-level`` and ``log-to-driver``, and ``RayBackend.init_ray``
calls ``ray.init(runtime_env=..., **init_args)`` without an address. Ray itself then reads
``RAY_ADDRESS`` (``ray._private.worker.init``: an address left unset is taken from that variable),
so the supported route is the environment: ``flwr-simulation`` inherits it from the SuperLink,
and the SuperLink from :func:`florec.sim.flower.flwr_run`. Flower must not pass ``num-cpus``
or ``num-gpus`` init-args then (Ray refuses them when it joins a cluster); FloRec never does.

Flower sizes its actor pool node by node (``pool_size_from_resources``: per node,
``floor(CPUs / client-resources-num-cpus)``, capped by ``floor(GPUs / client-resources-num-gpus)``
when a GPU share is asked), and Ray places each actor on a node with room, so the simulated
clients spread over every node of the cluster.

Actors on another host run with the environment of that host's ``ray start`` (plus the
``PYTHONPATH`` Flower forwards), not the driver's: they find the data through the run config's
``data-dir`` (:func:`shared_data_overrides` puts ``$FLOREC_DATA_DIR`` there) or through
``FLOREC_DATA_DIR`` set before ``ray start`` on that host.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from florec.recdata.errors import ConfigError, FloRecError

ADDRESS_ENV = "RAY_ADDRESS"


def parse_ray_address(address: str) -> tuple[str, int]:
    """Split a Ray cluster address ``HOST:PORT`` (the head's GCS address) into its parts.

    Raises
    ------
    ConfigError
        The address is not ``HOST:PORT`` (a Ray Client ``ray://`` address, ``auto``, no port).

    """
    text = address.strip()
    if "://" in text:
        raise ConfigError(f"--ray-address {address!r} is a Ray Client address; give the head's "
                          "GCS address HOST:PORT instead (the --port of `ray start --head`, "
                          "6379 by default)")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT; give the head's address "
                          "as `ray start --head` prints it, e.g. --ray-address 10.0.0.5:6379")
    return host, int(port)


def check_ray_address(address: str, timeout_s: float = 5.0) -> str:
    """Check that a Ray head answers at ``address``; return it normalised as ``HOST:PORT``.

    Only a TCP connection to the head's GCS port is tried (no Ray import, a few ms when the head
    is up), so a wrong host, a closed port or a firewall fails here in one line, before any
    SuperLink starts, rather than as a Ray time-out inside the run.

    Raises
    ------
    ConfigError
        The address is malformed.
    FloRecError
        Nothing accepts connections there within ``timeout_s`` seconds.

    """
    host, port = parse_ray_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise FloRecError(f"no Ray cluster answers at {host}:{port} ({why}); start its head with "
                          f"`ray start --head --port={port}`, or fix --ray-address (and open "
                          "the port between the hosts)") from None
    return f"{host}:{port}"


def cluster_env(env: dict[str, str], address: str) -> dict[str, str]:
    """A copy of ``env`` in which Flower's ``ray.init`` joins the cluster at ``address``."""
    return {**env, ADDRESS_ENV: address}


def shared_data_overrides(overrides: dict[str, Any], env: dict[str, str] | None = None
                          ) -> dict[str, Any]:
    """Run-config overrides that tell actors on every host where the data is.

    A ``data-dir`` already in ``overrides`` is kept. Otherwise ``$FLOREC_DATA_DIR`` of ``env``
    (default: this process's environment), made absolute, becomes the run's ``data-dir``: the run
    config reaches every actor, whereas this process's environment does not reach actors on
    other hosts. The path must then hold the data on every host (a shared file system, or the
    same copy at the same path).
    """
    env = os.environ if env is None else env
    if overrides.get("data-dir") or not env.get("FLOREC_DATA_DIR"):
        return dict(overrides)
    return {**overrides, "data-dir": str(Path(env["FLOREC_DATA_DIR"]).expanduser().resolve())}


#: ``ray start`` flags of a lean head: no dashboard, autoscaler monitor or log monitor
LEAN_HEAD_FLAGS = ("--include-dashboard=false", "--no-monitor", "--include-log-monitor=false")
#: seconds to wait for ``ray start`` to exit once its process tree was stopped, then kill it
STOP_WAIT_S = 10.0


@contextmanager
def local_head(num_cpus: int, env: dict[str, str] | None = None, log: Path | None = None,
               lean: bool = True, timeout_s: float = 90.0) -> Iterator[str]:
    """A one-host Ray head of our own (``ray start --head --block``), yielding its address.

    Flower's ``ray.init`` starts, besides GCS and raylet, a dashboard head, the autoscaler
    monitor and a log monitor (about 50 MB each); none can be turned off through Flower 1.42's
    federation config. A head started here with :data:`LEAN_HEAD_FLAGS` (``lean``) has neither
    monitor (Ray still starts its minimal dashboard head and, with ``ray[client]`` installed, a
    Ray Client server that ``ray start`` cannot leave out; the blocking ``ray start`` process
    stays too); ``florec sim --ray-address``
    (or ``RAY_ADDRESS``) then runs the simulation on it. Every port is chosen free and the head
    gets a temp dir of its own, so a ``ray.init()`` elsewhere on the host (which looks for the
    newest ``ray start`` in ``/tmp/ray``) never joins it. The head and everything it started
    are stopped by PID on exit.

    Parameters
    ----------
    num_cpus : int
        CPUs the head offers (Flower sizes its actor pool from them).
    env : dict, optional
        The head's environment (its workers and actors inherit it); default this process's.
    log : Path, optional
        Where ``ray start`` writes its output; default a ``/tmp/fr-ray-start-*.log`` outside the
        head's temp dir, deleted on exit unless the head failed to start (the error names it).
    lean : bool
        Start without the dashboard, the autoscaler monitor and the log monitor.
    timeout_s : float
        Seconds to wait for the head to come up.

    Raises
    ------
    FloRecError
        No ``ray`` command beside this Python, or ``ray start`` exited or did not start in
        ``timeout_s``.

    """
    from florec.sim.flower import RAY_DIRECT_CALL_BYTES, free_ports
    from florec.sim.teardown import stop_process_tree

    ray = Path(sys.executable).with_name("ray")
    if not ray.is_file():
        raise FloRecError(f"no `ray` command next to {sys.executable}; install Flower's "
                          "simulation extra: pip install 'flwr[simulation]'")
    temp_dir = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))  # socket paths are short
    own_log = log is None  # outside temp_dir, which goes on exit: kept when the head fails
    log = Path(tempfile.mkstemp(prefix="fr-ray-start-", suffix=".log")[1]) if own_log else log
    p = free_ports(8)
    cmd = [str(ray), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
           "--node-ip-address=127.0.0.1", f"--port={p[0]}", f"--node-manager-port={p[1]}",
           f"--object-manager-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
           f"--dashboard-agent-grpc-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
           f"--metrics-export-port={p[6]}", f"--ray-client-server-port={p[7]}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *(LEAN_HEAD_FLAGS if lean else ())]
    env = {**(os.environ if env is None else env), "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("RAY_max_direct_call_object_size", str(RAY_DIRECT_CALL_BYTES))
    env.pop(ADDRESS_ENV, None)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    started = False
    try:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise FloRecError(f"`ray start --head` did not start ({tail[0][:200]}); see {log}")
            time.sleep(0.5)
        started = True
        yield f"127.0.0.1:{p[0]}"
    finally:
        stop_process_tree(proc.pid, session=True)
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:  # never hide the error that brought us here
            proc.kill()
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if own_log and started:
            log.unlink(missing_ok=True)
