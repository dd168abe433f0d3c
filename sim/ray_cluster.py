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
import socket
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
