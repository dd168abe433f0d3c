"""Failures: a client that raises or times out is logged and skipped; the round goes on."""

import json

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from florec.client import app as florec_app
from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.server.loop import stream_replies
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
        assert row["dropped"] == [f"node {bad_node}"] * len(kinds)
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
    assert all(r["train"]["num-replies"] == 3 and r["dropped"] == ["node 3"] for r in rows)
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
