"""Users -> buckets: the user set that each Flower node hosts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from florec.recdata.errors import ConfigError

if TYPE_CHECKING:
    from florec.recdata.runconfig import RunConfig

PARTITION_MODES = ("contiguous", "random", "floor")


def num_buckets(n_users: int, *, num_nodes: int = 0, users_per_node: int = 0) -> int:
    """Number of buckets: ``ceil(n_users / users_per_node)`` if that is set, else ``num_nodes``."""
    if users_per_node > 0:
        return math.ceil(n_users / users_per_node)
    if num_nodes <= 0:
        raise ConfigError("num-nodes must be > 0 (or set users-per-node > 0)")
    if num_nodes > n_users:
        raise ConfigError(
            f"num-nodes={num_nodes} exceeds the {n_users} users of the dataset; "
            f"set num-nodes <= {n_users}"
        )
    return num_nodes


def partition_users(
    n_users: int,
    *,
    num_nodes: int = 0,
    users_per_node: int = 0,
    mode: str = "contiguous",
    seed: int = 0,
) -> list[np.ndarray]:
    """Assign every user to exactly one bucket.

    Parameters
    ----------
    n_users : int
        Users 0..n_users-1.
    num_nodes, users_per_node : int
        Bucket count, or bucket size when ``users_per_node > 0`` (it wins).
    mode : {"contiguous", "random", "floor"}
        Consecutive user ids per bucket, or a seeded permutation first. ``floor`` is FedCIA's
        rule: each of the K = ``num_nodes`` buckets gets ``floor(n_users / K)`` consecutive
        users and the last one also takes the remainder (943 users, K=100: 99 x 9 and 1 x 52);
        it needs ``num_nodes`` (``users_per_node`` must be 0).
    seed : int
        Seed of the permutation in ``random`` mode.

    Returns
    -------
    list of np.ndarray
        Sorted int64 user ids of each bucket; sizes differ by at most one in ``num_nodes`` mode
        (except ``floor``).

    """
    if mode not in PARTITION_MODES:
        raise ConfigError(
            f"partition '{mode}' is unknown; choose one of {', '.join(PARTITION_MODES)}"
        )
    if mode == "floor" and users_per_node > 0:
        raise ConfigError(f"partition 'floor' splits the users into num-nodes buckets; set "
                          f"users-per-node=0 (got {users_per_node}) or use partition contiguous")
    n = num_buckets(n_users, num_nodes=num_nodes, users_per_node=users_per_node)
    users = np.arange(n_users, dtype=np.int64)
    if mode == "floor":
        size = n_users // n
        return [users[i * size : (i + 1) * size] for i in range(n - 1)] + [users[(n - 1) * size :]]
    if mode == "random":
        users = np.random.default_rng(seed).permutation(users)
    if users_per_node > 0:
        chunks = [users[i : i + users_per_node] for i in range(0, n_users, users_per_node)]
    else:
        chunks = np.array_split(users, n)
    return [np.sort(c) for c in chunks]


def node_clients(
    n_users: int,
    *,
    num_nodes: int = 0,
    users_per_node: int = 0,
    clients_per_node: int = 1,
    mode: str = "contiguous",
    seed: int = 0,
) -> list[list[np.ndarray]]:
    """Users -> clients -> nodes: ``num_nodes * clients_per_node`` clients, consecutive per node.

    A client is what a method federates over (FedCIA's client keeps one private model); a node
    is a Flower node hosting ``clients_per_node`` of them, so that a node can batch its clients'
    work. With ``clients_per_node=1`` a node is one client.

    Returns
    -------
    list of list of np.ndarray
        Per node, the sorted user ids of each of its clients.
    """
    if clients_per_node > 1 and users_per_node > 0:
        raise ConfigError("clients-per-node > 1 needs num-nodes (set users-per-node=0)")
    clients = partition_users(n_users, num_nodes=num_nodes * clients_per_node,
                              users_per_node=users_per_node, mode=mode, seed=seed)
    return [clients[i : i + clients_per_node] for i in range(0, len(clients), clients_per_node)]


def node_clients_of(cfg: RunConfig, n_users: int) -> list[list[np.ndarray]]:
    """The run's cut of users into nodes and clients, as the server and the shards make it.

    Parameters
    ----------
    cfg : RunConfig
        The run; its ``num-nodes``, ``users-per-node``, ``clients-per-node``, ``partition`` and
        ``split-seed`` keys fix the cut.
    n_users : int
        Users 0..n_users-1 of the run's split.

    Returns
    -------
    list of list of np.ndarray
        :func:`node_clients` with the run's partition keys: per node, the sorted user ids of
        each of its clients.

    """
    return node_clients(n_users, num_nodes=cfg.num_nodes, users_per_node=cfg.users_per_node,
                        clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                        seed=cfg.split_seed)
