"""Everything a federated run sets up before round 1: data, partition, nodes, strategy.

:func:`prepare_federation` loads the split, cuts it into one bucket of users per node, waits
for the nodes, builds the strategy with its initial global state, tells it the user cohorts
(and which node hosts which bucket, where cohorts leave users out) and runs the strategy's
setup stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.recdata.partition import node_clients
from florec.recdata.runconfig import RunConfig
from florec.recdata.splits import Split
from florec.recdata.store import get_split
from florec.server.loop import learn_partitions, stream_replies, wait_for_nodes
from florec.strategies.base import RecStrategy
from florec.strategies.registry import attach_cohorts, build_strategy

#: a strategy whose setup has not finished after this many stages is broken
MAX_SETUP_STAGES = 100


@dataclass
class Federation:
    """What the round loop works on.

    Attributes
    ----------
    split : Split
        The global split (the server reads only its sizes).
    buckets : list of list of np.ndarray
        Each partition's clients' users (``buckets[p]`` is hosted by the node of partition p).
    strategy : RecStrategy
        The run's strategy, cohorts and setup done.
    arrays : ArrayRecord
        The initial global state (after the setup stages).

    """

    split: Split
    buckets: list[list[np.ndarray]]
    strategy: RecStrategy
    arrays: ArrayRecord

    @property
    def num_partitions(self) -> int:
        """Number of buckets, one per node."""
        return len(self.buckets)


def setup_phase(grid: Grid, strategy: RecStrategy, arrays: ArrayRecord, timeout_s: float
                ) -> ArrayRecord:
    """Run the strategy's setup stages (if any) before round 1; returns the initial state.

    Raises
    ------
    RuntimeError
        If the strategy still sends messages after :data:`MAX_SETUP_STAGES` stages.

    """
    for stage in range(MAX_SETUP_STAGES):
        messages = list(strategy.configure_setup(stage, arrays, grid))
        if not messages:
            return arrays
        arrays = strategy.aggregate_setup(
            stage, arrays, stream_replies(grid, messages, timeout_s, strategy.unresponsive))
    raise RuntimeError(f"strategy setup did not finish in {MAX_SETUP_STAGES} stages")


def partition_split(cfg: RunConfig) -> tuple[Split, list[list[np.ndarray]]]:
    """The run's split and each node's clients' users, exactly as every node computes them."""
    split, split_path = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                                  cfg.min_rating, cfg.synthetic_params())
    buckets = node_clients(split.n_users, num_nodes=cfg.num_nodes,
                           users_per_node=cfg.users_per_node,
                           clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                           seed=cfg.split_seed)
    log(INFO, "split in %s: %d users in %d buckets", split_path, split.n_users, len(buckets))
    return split, buckets


def prepare_federation(grid: Grid, cfg: RunConfig) -> Federation:
    """Split, partition, wait for one node per bucket, build the strategy and run its setup.

    Raises
    ------
    ConfigError
        If the number of connected nodes differs from the number of buckets (see
        :func:`florec.server.loop.wait_for_nodes`) or the config names no federated method.

    """
    split, buckets = partition_split(cfg)
    wait_for_nodes(grid, len(buckets), cfg.node_wait_s)
    log(INFO, "%d nodes registered", len(buckets))
    strategy, arrays = build_strategy(cfg, split.n_items)
    if attach_cohorts(strategy, cfg, split.n_users, [np.concatenate(b) for b in buckets]):
        strategy.set_partitions(learn_partitions(grid, cfg.round_timeout_s))
    arrays = setup_phase(grid, strategy, arrays, cfg.round_timeout_s)
    return Federation(split, buckets, strategy, arrays)
