"""What every FloRec strategy shares: node sampling, byte counts, dropped nodes, evaluation pooling.

Subclasses implement ``configure_train`` / ``aggregate_train`` (Flower's hooks); a strategy that
needs a second message per round (FedCIA's alignment) also implements ``configure_align``.
With user cohorts (:meth:`RecStrategy.set_cohorts`), :meth:`RecStrategy.sample` also leaves out
the nodes that hold no user of the round's cohort. A strategy with state that outlives a round
overrides :meth:`RecStrategy.state_arrays` / :meth:`RecStrategy.load_state_arrays` so that a
checkpoint can restore it.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from florec.models.metrics import add_sums
from florec.recdata.cohort import buckets_with_cohort, sample_cohort
from florec.recdata.seeds import Salt, stream
from florec.strategies.payload import record_nbytes


class RecStrategy(Strategy):
    """Base of FloRec's strategies.

    Parameters
    ----------
    fraction_train : float
        Share of nodes sampled per training round (seeded by ``seed`` and the round).
    seed : int
        Seed of node sampling.

    """

    def __init__(self, fraction_train: float = 1.0, seed: int = 0) -> None:
        self.fraction_train, self.seed = fraction_train, seed
        self.bytes_down = self.bytes_up = 0
        self.dropped: list[str] = []
        self.unresponsive: set[int] = set()
        self.partition_of: dict[int, int] = {}
        self.cohort_spec: tuple[int, int, float, int] | None = None
        self.node_users: list[np.ndarray] = []
        self.round_cohort: np.ndarray | None = None
        self.evaluated_partitions: list[int] = []

    def start_round(self) -> None:
        """Reset the per-round counters (the server calls this before each round)."""
        self.bytes_down = self.bytes_up = 0
        self.dropped = []
        self.unresponsive = set()
        self.round_cohort = None

    def node_name(self, node_id: int) -> str:
        """``node <id>``, with its partition where the server learned it."""
        pid = getattr(self, "partition_of", {}).get(int(node_id))
        return f"node {node_id}" + ("" if pid is None else f" (partition {pid})")

    def drop(self, server_round: int, msg: Message, problem: str) -> None:
        """Log and remember a reply that cannot be used."""
        who = self.node_name(msg.metadata.src_node_id)
        log(WARNING, "round %d: skipping reply of %s: %s", server_round, who, problem)
        self.dropped.append(who)

    def set_partitions(self, partition_of: dict[int, int]) -> None:
        """Tell the strategy which partition (bucket) each node id hosts.

        Flower's node ids are random per run, partition ids are not: nodes are sampled, sent
        messages and their replies aggregated in partition order (:meth:`in_node_order`), so a
        seeded run samples the same partitions and sums their replies in the same order every
        time; logs name a node with its partition (:meth:`node_name`).
        """
        self.partition_of = {int(k): int(v) for k, v in partition_of.items()}

    def node_key(self, node_id: int) -> tuple[int, int]:
        """Sort key of a node: ``(0, partition id)``, or ``(1, node id)`` where none is known."""
        pid = getattr(self, "partition_of", {}).get(int(node_id))
        return (1, int(node_id)) if pid is None else (0, pid)

    def in_node_order(self, messages: Iterable[Message]) -> list[Message]:
        """``messages`` sorted by their destination's :meth:`node_key` (a stable sort).

        The server pushes a round's messages in this order and hands the replies to the
        strategy in it whatever order they arrive in
        (:func:`florec.server.loop.stream_replies`), so every float sum over replies runs in
        the same order in every run of a config.
        """
        return sorted(messages, key=lambda m: self.node_key(m.metadata.dst_node_id))

    def set_cohorts(self, seed: int, n_users: int, fraction: float, size: int,
                    node_users: list[np.ndarray]) -> None:
        """Train only a seeded cohort of users per round (see :mod:`florec.recdata.cohort`).

        Parameters
        ----------
        seed, n_users, fraction, size
            The cohort is ``sample_cohort(seed, round, n_users, fraction, size)``.
        node_users : list of np.ndarray
            Users of each partition; nodes whose partition holds no cohort user get no
            training message (nodes of unknown partition always get one).

        """
        self.cohort_spec = (seed, n_users, fraction, size)
        self.node_users = list(node_users)

    def cohort_nodes(self, node_ids: list[int], server_round: int) -> list[int]:
        """``node_ids`` minus the nodes that hold no user of this round's cohort."""
        spec = getattr(self, "cohort_spec", None)
        if spec is None:
            return node_ids
        seed, n_users, fraction, size = spec
        self.round_cohort = sample_cohort(seed, server_round, n_users, fraction, size)
        if len(self.round_cohort) == n_users:
            return node_ids
        hit = buckets_with_cohort(self.round_cohort, self.node_users)
        return [n for n in node_ids
                if n not in self.partition_of or self.partition_of[n] in hit]

    def messages(self, record: RecordDict, node_ids: list[int], kind: str) -> list[Message]:
        """One message per node carrying ``record``; counts the bytes sent."""
        self.bytes_down += record_nbytes(record) * len(node_ids)
        return [Message(content=record, message_type=kind, dst_node_id=n) for n in node_ids]

    def train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid, **extra: str) -> list[Message]:
        """Training messages carrying ``arrays`` and ``config`` to the sampled nodes.

        The round number and the ``extra`` keys are added to ``config``.
        """
        config["server-round"] = server_round
        for key, value in extra.items():
            config[key] = value
        record = RecordDict({"arrays": arrays, "config": config})
        return self.messages(record, self.sample(list(grid.get_node_ids()), server_round),
                             MessageType.TRAIN)

    def sample(self, node_ids: list[int], server_round: int) -> list[int]:
        """Seeded sample of ``fraction_train`` of the nodes (all of them at 1.0).

        Nodes are drawn in :meth:`node_key` order (by partition, where the server set
        :meth:`set_partitions`). With user cohorts, nodes holding no cohort user are then left
        out.
        """
        node_ids = sorted(node_ids, key=self.node_key)
        k = max(1, int(round(self.fraction_train * len(node_ids))))
        if k < len(node_ids):
            rng = stream(self.seed, Salt.NODE_SAMPLING, server_round)
            node_ids = sorted(rng.choice(node_ids, size=k, replace=False).tolist(),
                              key=self.node_key)
        return self.cohort_nodes(node_ids, server_round)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """State that outlives a round, for checkpoints (none by default)."""
        return {}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` returned."""

    def responsive_nodes(self, grid: Grid) -> list[int]:
        """Connected nodes, minus those that missed a reply this round."""
        return sorted(set(grid.get_node_ids()) - self.unresponsive)

    def discard_round(self) -> None:
        """Forget what this round's training produced (too few clients replied)."""

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Messages of setup stage ``stage`` (0, 1, ...) before round 1; none ends the setup.

        A strategy that needs something from the clients before training (e.g. item popularity
        by secure sum) sends ``train.setup`` messages here; the default needs nothing.
        """
        return []

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Fold the replies of setup stage ``stage`` into the initial global state."""
        return arrays

    def configure_align(self, server_round: int, grid: Grid) -> Iterable[Message]:
        """Messages of an optional second training phase (none by default)."""
        return []

    def aggregate_align(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        """Sum the metrics of the second phase; log failed nodes."""
        sums: dict[str, float] = {}
        for msg in replies:
            if msg.has_error():
                self.drop(server_round, msg, f"client error: {msg.error.reason}")
                continue
            for k, v in msg.content.metric_records.get("metrics", {}).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return MetricRecord(sums)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Ask every responsive node to evaluate all its users (reported numbers cover all)."""
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return self.messages(record, self.responsive_nodes(grid), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Pool per-user metric sums over nodes (never an average of node means).

        The partitions whose sums were pooled are left in :attr:`evaluated_partitions` (the
        server compares rounds only on the same evaluated users).
        """
        sums: dict[str, float] = {}
        self.evaluated_partitions = []
        for msg in replies:
            if msg.has_error():
                self.drop(server_round, msg, f"evaluation failed: {msg.error.reason}")
                continue
            node_sums = dict(msg.content.metric_records["metrics"])
            pid = node_sums.pop("partition-id", None)
            if pid is not None:
                self.evaluated_partitions.append(int(pid))
            sums = add_sums(sums, node_sums)
        return MetricRecord(sums) if sums else None
