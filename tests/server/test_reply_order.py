"""Replies reach the strategy in partition order, whatever order they arrive in.

Flower hands replies over in arrival order, which changes from run to run; a float sum over
them then changes in its last bits. :class:`ArrivalGrid` plays a SuperLink whose nodes finish
in a seeded random order: two runs of one config on grids of different arrival orders and
node ids must end bit for bit alike.
"""

import hashlib
import json

import numpy as np
import pytest
from flwr.app import Message, MessageType, RecordDict

from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.server.loop import stream_replies
from florec.sim.local_grid import LocalGrid
from florec.strategies.fedcia import LocalOnly

CFG = {"dataset": "synthetic", "synthetic-users": 50, "synthetic-items": 40,
       "synthetic-interactions": 8, "split": "ratio", "dim": 8, "lr": 0.1,
       "local-batch-size": 16, "num-nodes": 5, "num-rounds": 2}


class ArrivalGrid(LocalGrid):
    """A grid whose nodes all finish before the first pull, in a seeded random order.

    A pull returns every finished reply among the ids asked for, in that arrival order, as a
    SuperLink does.
    """

    def __init__(self, *args, arrival_seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(arrival_seed)
        self.done: dict[str, Message] = {}

    def pull_messages(self, message_ids):
        queued = list(self._queued)
        for i in self.rng.permutation(len(queued)):
            self.done[queued[i]] = self._handle(self._queued.pop(queued[i]))
        wanted = set(message_ids)
        return [self.done.pop(m) for m in list(self.done) if m in wanted]


def without_clocks(row):
    """A rounds.jsonl row less its wall-clock times and memory readings (they vary)."""
    if not isinstance(row, dict):
        return row
    return {k: without_clocks(v) for k, v in row.items()
            if "seconds" not in k and not k.startswith("rss")}


def run_digest(tmp_path, config, arrival_seed, ids_seed):
    """(rounds.jsonl rows, sha256 of every node's stored arrays in partition order)."""
    cfg = parse_run_config(config)
    grid = ArrivalGrid(cfg.to_flower(), cfg.num_nodes, arrival_seed=arrival_seed,
                       random_ids=ids_seed)
    run_federated(grid, cfg, tmp_path)
    rows = [without_clocks(json.loads(x))
            for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    digest = hashlib.sha256()
    for ctx in sorted(grid.contexts.values(), key=lambda c: c.node_config["partition-id"]):
        for key in sorted(ctx.state.array_records):
            for name, array in sorted(ctx.state.array_records[key].items()):
                digest.update(name.encode() + array.numpy().tobytes())
    return rows, digest.hexdigest()


@pytest.mark.parametrize("extra", [
    {"algorithm": "fedcia"},  # the n x n Gram sum and the pooled evaluation
    {"algorithm": "fedavg", "aggregation": "sparse", "fraction-train": 0.6},
])
def test_two_runs_with_different_arrival_orders_and_node_ids_agree_bit_for_bit(tmp_path, extra):
    first = run_digest(tmp_path / "a", CFG | extra, arrival_seed=1, ids_seed=3)
    second = run_digest(tmp_path / "b", CFG | extra, arrival_seed=2, ids_seed=4)
    assert first[0] == second[0]  # every metric of every round, exactly
    assert first[1] == second[1]  # every node's stored model and optimizer state


def test_stream_replies_yields_in_message_order_whatever_the_arrival_order():
    grid = ArrivalGrid({}, 6, arrival_seed=0,
                       handlers={MessageType.TRAIN: lambda m, c: Message(m.content, reply_to=m)})
    order = [4, 1, 6, 2, 5, 3]
    messages = [Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=n)
                for n in order]
    got = [int(r.metadata.src_node_id) for r in stream_replies(grid, messages, 5.0)]
    assert [int(r.metadata.src_node_id) for r in grid.received] != order  # arrived shuffled
    assert got == order


@pytest.fixture
def run_ids():
    LocalGrid({}, 1, handlers={})  # the run/task ids a Flower process sets (a Message needs them)


def test_in_node_order_and_sampling_follow_partitions_not_node_ids(run_ids):
    picks = []
    for ids in ([30, 10, 20, 50, 40], [7, 99, 3, 12, 61]):
        strategy = LocalOnly(fraction_train=0.6, seed=2)
        strategy.set_partitions({n: p for p, n in enumerate(ids)})  # node ids[p] hosts p
        messages = [Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=n)
                    for n in sorted(ids) + [1000]]  # 1000: a node of unknown partition
        ordered = [m.metadata.dst_node_id for m in strategy.in_node_order(messages)]
        assert ordered == ids + [1000]
        picks.append([ids.index(n) for n in strategy.sample(list(ids), server_round=1)])
    assert picks[0] == picks[1] and len(picks[0]) == 3


class StrayGrid(LocalGrid):
    """A grid whose pulls first hand back a message that replies to none of the ids asked for.

    Flower 1.42's pull handler can also return messages addressed to the SuperLink itself.
    """

    def pull_messages(self, message_ids):
        stray = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=0)
        return [stray, *super().pull_messages(message_ids)]


def test_stream_replies_skips_pulled_messages_that_reply_to_another_message():
    echo = {MessageType.TRAIN: lambda m, c: Message(m.content, reply_to=m)}
    grid = StrayGrid({}, 3, handlers=echo)
    messages = [Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=n)
                for n in (2, 3, 1)]
    replies = list(stream_replies(grid, messages, 5.0))
    mids = [m.metadata.message_id for m in messages]
    assert [r.metadata.reply_to_message_id for r in replies] == mids
    assert [int(r.metadata.src_node_id) for r in replies] == [2, 3, 1]
