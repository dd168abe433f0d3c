"""Failures: a client that raises or times out is logged and skipped; the round goes on."""

import json

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from florec.client import app as florec_app
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.server.loop import stream_replies
from florec.server.progress import Progress
from florec.server.results import run_entry
from florec.server.selection import Coverage, improves, select_round
from florec.sim.local_grid import LocalGrid


def flaky_app(bad_partition: int, kinds: tuple[str, ...]) -> ClientApp:
    """FloRec's ClientApp, except that one partition raises on the given message types."""
    app = ClientApp()

    def guard(kind, handler):
        def handle(msg: Message, context) -> Message:
            if int(context.node_config["partition-id"]) == bad_partition and kind in kinds:
                raise RuntimeError(f"partition {bad_partition} is broken")
            return handler(msg, context)
        return handle

    app.train()(guard(MessageType.TRAIN, florec_app.train))
    app.evaluate()(guard(MessageType.EVALUATE, florec_app.evaluate))
    return app


def rows_of(out):
    return [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kinds", [(MessageType.TRAIN,), (MessageType.TRAIN, MessageType.EVALUATE)])
def test_a_client_app_that_raises_on_one_node_is_skipped_and_named(tmp_path, small_config, kinds):
    cfg = parse_run_config(small_config | {"min-fit-fraction": 0.5})
    app = flaky_app(1, kinds)
    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, random_ids=5,
                     handlers={MessageType.TRAIN: app, MessageType.EVALUATE: app})
    bad_node = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == 1)
    result = run_federated(grid, cfg, tmp_path)
    rows = rows_of(tmp_path)
    assert result["rounds"] == 2 and len(rows) == 2
    for row in rows:
        assert row["train"]["num-replies"] == 3
        assert row["dropped"] == [f"node {bad_node} (partition 1)"] * len(kinds)
    expected_users = 30 if MessageType.EVALUATE in kinds else 40
    assert result["metrics"]["num-users"] == expected_users
    assert rows[1]["valid"]["ndcg@10"] > 0


class SilentNodeGrid(LocalGrid):
    """A grid on which one node never answers training messages (a hung client)."""

    def __init__(self, *args, silent: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.silent = silent

    def pull_messages(self, message_ids):
        for msg_id in message_ids:
            msg = self._queued.get(msg_id)
            if msg is None or (msg.metadata.dst_node_id == self.silent
                               and msg.metadata.message_type == MessageType.TRAIN):
                continue
            return [self._handle(self._queued.pop(msg_id))]
        return []


def test_a_node_that_times_out_is_dropped_and_the_round_proceeds(tmp_path, small_config):
    cfg = parse_run_config(small_config | {"round-timeout-s": 0.5, "min-fit-fraction": 0.5})
    grid = SilentNodeGrid(cfg.to_flower(), cfg.num_nodes, silent=3)
    result = run_federated(grid, cfg, tmp_path)
    rows = rows_of(tmp_path)
    assert result["rounds"] == 2
    dropped = ["node 3 (partition 2)"]  # node ids start at 1
    assert all(r["train"]["num-replies"] == 3 and r["dropped"] == dropped for r in rows)
    assert all(r["valid"]["num-users"] == 30 for r in rows)  # no evaluation asked of node 3


def test_stream_replies_gives_up_on_missing_nodes_after_the_timeout(small_config, caplog):
    cfg = parse_run_config(small_config)
    grid = SilentNodeGrid(cfg.to_flower(), 3, silent=2,
                          handlers={MessageType.TRAIN: lambda m, c: Message(m.content, reply_to=m)})
    messages = [Message(content=RecordDict(), message_type=MessageType.TRAIN,
                        dst_node_id=n) for n in (1, 2, 3)]
    missing: set[int] = set()
    with caplog.at_level("WARNING"):
        replies = list(stream_replies(grid, messages, 0.3, missing))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 3]
    assert missing == {2} and "no reply from node(s) 2" in caplog.text


def test_stream_replies_behind_a_silent_first_node_come_in_message_order(small_config):
    cfg = parse_run_config(small_config)
    grid = SilentNodeGrid(cfg.to_flower(), 4, silent=3,
                          handlers={MessageType.TRAIN: lambda m, c: Message(m.content, reply_to=m)})
    messages = [Message(content=RecordDict(), message_type=MessageType.TRAIN,
                        dst_node_id=n) for n in (3, 4, 1, 2)]
    missing: set[int] = set()
    replies = list(stream_replies(grid, messages, 0.3, missing))
    assert [int(r.metadata.src_node_id) for r in replies] == [4, 1, 2]
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in messages[1:]]
    assert missing == {3}


def test_a_round_evaluated_on_fewer_users_is_not_selected_over_a_full_one(tmp_path, small_config):
    """Round 2 loses the node whose users score lowest, so its mean is the highest of all."""
    cfg = parse_run_config(small_config | {"num-rounds": 3, "lr": 1e-12})  # the model stays
    seen: dict[int, float] = {}

    def evaluate(msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content.config_records["config"]["server-round"])
        if rnd == 2 and pid == min(seen, key=seen.get):
            raise RuntimeError("node lost")
        reply = florec_app.evaluate(msg, context)
        sums = reply.content.metric_records["metrics"]
        seen.setdefault(pid, sums["valid/ndcg@10"] / sums["valid/num-users"])
        return reply

    grid = LocalGrid(cfg.to_flower(), cfg.num_nodes,
                     handlers={MessageType.TRAIN: florec_app.train,
                               MessageType.EVALUATE: evaluate})
    result = run_federated(grid, cfg, tmp_path)
    rows = rows_of(tmp_path)
    full, partial = rows[0]["valid"], rows[1]["valid"]
    assert partial["num-users"] < full["num-users"] == 40
    assert partial["ndcg@10"] > full["ndcg@10"]  # the old rule would have picked round 2
    assert [r["comparable"] for r in rows] == [True, False, True]
    assert rows[1]["coverage"]["nodes_evaluated"] == 3 and not rows[1]["coverage"]["complete"]
    saved = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert saved["best_round"] == 1 == result["best_round"]
    assert saved["coverage"] == {"valid_users": 40, "test_users": 40, "nodes_evaluated": 4,
                                 "nodes": 4, "complete": True, "missing_partitions": []}
    assert saved["metrics"]["num-users"] == saved["coverage"]["test_users"]


def cov(parts, n=4, users=10):
    return Coverage(frozenset(parts), n, users * len(parts), users * len(parts))


def test_best_round_compares_only_rounds_on_the_same_users():
    state = Progress(arrays=None, run=run_entry("m", "federated", "d", "loo", 0))
    assert select_round(state, 1, "ndcg@10", {"ndcg@10": 0.3}, {}, cov({0, 1, 2}))
    assert state.run["best_round"] == 1
    # a superset of users replaces the best whatever its score (the old score is on fewer users)
    assert select_round(state, 2, "ndcg@10", {"ndcg@10": 0.1}, {}, cov({0, 1, 2, 3}))
    assert state.run["best_round"] == 2 and state.best_score == 0.1
    # fewer users: not comparable, never selected, counts as an evaluation without improvement
    assert not select_round(state, 3, "ndcg@10", {"ndcg@10": 0.9}, {}, cov({0, 1}))
    assert state.run["best_round"] == 2 and state.since_best == 1
    # the same users: the higher score wins
    assert select_round(state, 4, "ndcg@10", {"ndcg@10": 0.2}, {}, cov({0, 1, 2, 3}))
    assert state.run["best_round"] == 4 and state.since_best == 0
    assert Coverage.from_json(state.run["coverage"]) == cov({0, 1, 2, 3})
    assert not improves(0.5, cov({1, 2, 3}), 0.2, cov({0, 1, 2}))  # other users, same count
