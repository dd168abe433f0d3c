"""What ``florec sim`` hands to ``flwr run``, and the checks made before a SuperLink starts.

:func:`toml_value` and :func:`parse_overrides` write and read ``-c key=value`` run configs,
:func:`federation_config` builds the simulation's ``--federation-config``, :func:`in_child`
runs the config check and partition sizing in a forked child (so the process that waits for
the run holds neither torch nor the dataset) and :func:`check_federated` is the ServerApp's
config check run up front.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

from florec.recdata.errors import FloRecError

T = TypeVar("T")


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


def federation_config(num_supernodes: int, cpus_per_client: float = 1.0,
                      gpus_per_client: float = 0.0, local_cpus: int | None = None) -> str:
    """The ``--federation-config`` of a simulation.

    Flower starts ``floor(Ray CPUs / client-resources-num-cpus)`` ClientApp actors, each of which
    imports the ClientApp (torch included, about 170 MB) once it gets a message. With a Ray of
    its own (``local_cpus``: this machine's CPUs) a federation of fewer nodes than that gets
    ``init-args-num-cpus`` = nodes x CPUs per client, so no actor is started that no node could
    keep busy (a node's messages run one at a time). On a cluster (``local_cpus`` None) Ray's
    resources are the cluster's and Flower must not pass init-args.
    """
    fed = (f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client:g} "
           f"client-resources-num-gpus={gpus_per_client:g}")
    needed = num_supernodes * int(cpus_per_client)
    if local_cpus is not None and needed < local_cpus:
        fed += f" init-args-num-cpus={needed}"
    return fed


def in_child(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a forked child process; its result, or its exception, here.

    A command that waits for a run for hours (``florec sim``) checks the config and sizes the
    partition in a child, so the waiting process never imports torch nor keeps the dataset
    (about 200 MB on ML-1M). Where ``fork`` is unavailable the call runs in this process.

    Raises
    ------
    FloRecError
        The child died without an answer (killed, or out of memory).

    """
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return fn(*args, **kwargs)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def target() -> None:
        try:
            result: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
            result = (False, err)
        try:
            send.send(result)
        except Exception as err:  # noqa: BLE001 - an unpicklable result or exception
            send.send((False, FloRecError(f"{type(err).__name__}: {err}")))

    proc = ctx.Process(target=target, daemon=True)
    proc.start()
    send.close()
    try:
        ok, value = recv.recv()
    except EOFError:
        proc.join()
        raise FloRecError(f"the config check's process exited with code {proc.exitcode} "
                          "without an answer; run the command again") from None
    proc.join()
    if ok:
        return value
    raise value


def check_federated(cfg: Any) -> None:
    """Every check the ServerApp makes of a federated config, before a SuperLink or Ray starts.

    Raises
    ------
    ConfigError
        The (algorithm, model) pair, the cohorts or ``mf-loss`` have no federated form.

    """
    from florec.models.registry import SEQUENTIAL_MODELS
    from florec.strategies.registry import check_algorithm

    check_algorithm(cfg)
    if cfg.algorithm == "fedavg" and cfg.mf_loss != "bpr" and cfg.model not in SEQUENTIAL_MODELS:
        from florec.strategies.fair import check_fair_config

        check_fair_config(cfg)
