"""Everything a federated run sets up before round 1: node facts, partition, strategy.

The ServerApp opens no interaction data. :func:`prepare_federation` waits for the nodes and asks
each one ``query.partition`` (:func:`learn_nodes`): its partition, its number of users, the
catalogue size and the population. From those sizes and the public run config it rebuilds which
global user index sits on which node (:func:`florec.recdata.partition.node_clients_of`, checked
against every node's count), builds the strategy with its initial global state (CoT-Rec's
item side asks one node for the public item text, ``query.catalogue``), tells it the user
cohorts and runs the strategy's setup stages (e.g. the secure sum of item popularity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.recdata.errors import ConfigError, DataError
from florec.recdata.partition import node_clients_of
from florec.recdata.runconfig import RunConfig
from florec.server.loop import learn_partitions, stream_replies, wait_for_nodes
from florec.strategies.base import RecStrategy
from florec.strategies.registry import attach_cohorts, build_strategy

#: a strategy whose setup has not finished after this many stages is broken
MAX_SETUP_STAGES = 100
CATALOGUE = f"{MessageType.QUERY}.catalogue"


@dataclass
class Federation:
    """What the round loop works on.

    Attributes
    ----------
    n_users, n_items : int
        Users of the federation (the sum of the nodes' counts) and the catalogue size.
    buckets : list of list of np.ndarray
        Each partition's clients' users (``buckets[p]`` is hosted by the node of partition p),
        rebuilt from ``n_users`` and the run config.
    strategy : RecStrategy
        The run's strategy, cohorts and setup done.
    arrays : ArrayRecord
        The initial global state (after the setup stages).
    notes : dict
        Facts about the source data the nodes reported (``results.json``).

    """

    n_users: int
    n_items: int
    buckets: list[list[np.ndarray]]
    strategy: RecStrategy
    arrays: ArrayRecord
    notes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_partitions(self) -> int:
        """Number of buckets, one per node."""
        return len(self.buckets)


@dataclass
class NodeFacts:
    """What the nodes told the server about their data (``query.partition`` replies).

    Attributes
    ----------
    n_users, n_items : int
        Population (sum of the nodes' users) and catalogue size.
    sizes : list of int
        Users of each partition.
    partition_of : dict
        Node id -> partition id.
    notes : dict
        Source-data notes (e.g. ``given_overlap_dropped``), ``{key: {part: count}}``.

    """

    n_users: int
    n_items: int
    sizes: list[int]
    partition_of: dict[int, int]
    notes: dict[str, dict[str, int]]


def setup_phase(grid: Grid, strategy: RecStrategy, arrays: ArrayRecord, timeout_s: float
                ) -> ArrayRecord:
    """Run the strategy's setup stages (if any) before round 1; returns the initial state.

    Raises
    ------
    RuntimeError
        If the strategy still sends messages after :data:`MAX_SETUP_STAGES` stages.

    """
    for stage in range(MAX_SETUP_STAGES):
        messages = strategy.in_node_order(strategy.configure_setup(stage, arrays, grid))
        if not messages:
            return arrays
        arrays = strategy.aggregate_setup(
            stage, arrays, stream_replies(grid, messages, timeout_s, strategy.unresponsive))
    raise RuntimeError(f"strategy setup did not finish in {MAX_SETUP_STAGES} stages")


def _one(values: set, what: str) -> int:
    if len(values) != 1:
        raise DataError(f"the nodes disagree on {what} ({sorted(values)}); give every node a "
                        "shard cut from the same split (florec data shard)")
    return int(next(iter(values)))


def node_facts(replies: dict[int, dict[str, float]], failed: dict[int, str], expected: int
               ) -> NodeFacts:
    """Check the nodes' ``query.partition`` replies and combine them.

    Raises
    ------
    ConfigError
        A node could not report its data (its error is quoted), or the partitions are not
        ``0..expected-1`` each hosted once.
    DataError
        The nodes disagree on the catalogue or population, or their users do not add up.

    """
    if failed:
        node, why = sorted(failed.items())[0]
        raise ConfigError(f"node {node} could not report its data: {why.strip().splitlines()[-1]}"
                          + (f" ({len(failed) - 1} more nodes failed)" if len(failed) > 1 else ""))
    partition_of = {n: int(r["partition-id"]) for n, r in replies.items()}
    if sorted(partition_of.values()) != list(range(expected)):
        raise ConfigError(f"the nodes host partitions {sorted(partition_of.values())}, expected "
                          f"0..{expected - 1} once each; give each node its own partition-id")
    sizes = [0] * expected
    for node, pid in partition_of.items():
        sizes[pid] = int(replies[node]["num-users"])
    n_users = _one({int(r["population"]) for r in replies.values()}, "the number of users")
    n_items = _one({int(r["num-items"]) for r in replies.values()}, "the number of items")
    if sum(sizes) != n_users:
        raise DataError(f"the nodes host {sum(sizes)} users but report a population of "
                        f"{n_users}; give every node a shard of the same cut")
    notes: dict[str, dict[str, int]] = {}  # source-data notes: every node must report the same
    for key in sorted({k for r in replies.values() for k in r if k.startswith("note.")}):
        _, name, part = key.split(".", 2)
        notes.setdefault(name, {})[part] = _one({int(r.get(key, -1)) for r in replies.values()},
                                                f"the data note {key}")
    return NodeFacts(n_users, n_items, sizes, partition_of, notes)


def _first_node(grid: Grid, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(grid.get_node_ids()):
        if time.monotonic() > deadline:
            raise ConfigError(f"no node connected in {timeout_s:.0f} s; start the SuperNodes "
                              "or raise node-wait-s")
        time.sleep(0.2)


def learn_nodes(grid: Grid, cfg: RunConfig) -> NodeFacts:
    """Wait for every node and learn the federation's sizes from them (no data is opened).

    With ``num-nodes`` the server waits for that many nodes; with ``users-per-node`` it asks
    the first nodes how many partitions there are.

    Raises
    ------
    ConfigError, DataError
        See :func:`node_facts` and :func:`florec.server.loop.wait_for_nodes`.

    """
    replies: dict[int, dict[str, float]] = {}
    expected = cfg.num_nodes
    # nodes read their shards to answer: part of starting up, so node-wait-s bounds it too
    setup_s = max(cfg.round_timeout_s, cfg.node_wait_s)
    if cfg.users_per_node > 0:
        _first_node(grid, cfg.node_wait_s)
        replies, failed = learn_partitions(grid, setup_s)
        if failed:
            node_facts({}, failed, 0)
        expected = _one({int(r["num-partitions"]) for r in replies.values()},
                        "the number of partitions")
    wait_for_nodes(grid, expected, cfg.node_wait_s)
    if set(replies) != set(grid.get_node_ids()):
        replies, failed = learn_partitions(grid, setup_s)
        facts = node_facts(replies, failed, expected)
    else:
        facts = node_facts(replies, {}, expected)
    log(INFO, "%d nodes registered: %d users, %d items (sizes from the nodes)", expected,
        facts.n_users, facts.n_items)
    return facts


def partition_from_facts(cfg: RunConfig, facts: NodeFacts) -> list[list[np.ndarray]]:
    """Each partition's clients' users, rebuilt from the population and the run config.

    Raises
    ------
    DataError
        A node's number of users differs from its bucket's (its shard is of another cut).

    """
    buckets = node_clients_of(cfg, facts.n_users)
    counts = [sum(len(c) for c in b) for b in buckets]
    if counts != facts.sizes:
        bad = next(p for p, (a, b) in enumerate(zip(counts, facts.sizes, strict=False)) if a != b)
        raise DataError(f"partition {bad} reports {facts.sizes[bad]} users but the run config "
                        f"gives it {counts[bad]}; cut the shards with this run's partition keys")
    return buckets


def item_catalogue(grid: Grid, n_items: int, timeout_s: float) -> list[str]:
    """The public item text, asked from one node (``query.catalogue``).

    Raises
    ------
    DataError
        The node failed, or its text does not have one line per item.

    """
    node = sorted(grid.get_node_ids())[0]
    msg = Message(RecordDict({"config": ConfigRecord({})}), message_type=CATALOGUE,
                  dst_node_id=node)
    reply = next(iter(stream_replies(grid, [msg], timeout_s)), None)
    if reply is None or reply.has_error():
        why = "no reply" if reply is None else reply.error.reason.strip().splitlines()[-1]
        raise DataError(f"node {node} could not send the item text: {why}")
    texts = [str(t) for t in reply.content.config_records["config"]["texts"]]
    if len(texts) != n_items:
        raise DataError(f"node {node} sent {len(texts)} item texts for {n_items} items; cut "
                        "the shards again")
    return texts


def prepare_federation(grid: Grid, cfg: RunConfig) -> Federation:
    """Learn sizes from the nodes, partition, build the strategy and run its setup.

    Raises
    ------
    ConfigError
        If the number of connected nodes differs from the number of buckets (see
        :func:`florec.server.loop.wait_for_nodes`), a node cannot report its data, or the
        config names no federated method.

    """
    facts = learn_nodes(grid, cfg)
    buckets = partition_from_facts(cfg, facts)
    strategy, arrays = build_strategy(
        cfg, facts.n_items, facts.n_users,
        lambda: item_catalogue(grid, facts.n_items, cfg.round_timeout_s))
    attach_cohorts(strategy, cfg, facts.n_users, [np.concatenate(b) for b in buckets])
    strategy.set_partitions(facts.partition_of)  # replies are summed in partition order
    arrays = setup_phase(grid, strategy, arrays, cfg.round_timeout_s)
    return Federation(facts.n_users, facts.n_items, buckets, strategy, arrays, facts.notes)
