"""The fused train message (fused-evaluate): evaluate the received model, then train."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from florec.client import app, fedavg_node
from florec.models.mf import MF
from florec.protocol.codec import from_record, to_record
from florec.protocol.fused import (
    EVAL_COST,
    EVAL_ERROR,
    EVAL_RECORD,
    EVALUATE_ROUND,
    TRAIN_ERROR,
    split_reply,
)
from florec.recdata.runconfig import parse_run_config

pytestmark = pytest.mark.usefixtures("fresh_node_store")


def node(cfg) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                   state=RecordDict(), run_config=cfg.to_flower())


def message(kind, arrays, **config) -> Message:
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}),
                   dst_node_id=1, message_type=kind)


def test_a_fused_message_evaluates_the_received_model_before_training(small_config):
    cfg = parse_run_config(small_config | {"num-nodes": 2, "dim": 8, "lr": 0.1})
    arrays0 = to_record(MF(0, cfg.synthetic_items, dim=8, seed=1).shared_state())
    separate, fused = node(cfg), node(cfg)
    for ctx in (separate, fused):  # round 1 leaves trained private user rows in the store
        app.train(message(MessageType.TRAIN, arrays0, **{"server-round": 1}), ctx)
    arrays1 = to_record(MF(0, cfg.synthetic_items, dim=8, seed=2).shared_state())  # "round 1"
    # separate messages: evaluate round 1's model, then train round 2 on it
    evaluated = app.evaluate(message(MessageType.EVALUATE, arrays1, **{"server-round": 1}),
                             separate).content.metric_records["metrics"]
    trained = app.train(message(MessageType.TRAIN, arrays1, **{"server-round": 2}), separate)
    after = app.evaluate(message(MessageType.EVALUATE, arrays1, **{"server-round": 1}),
                         separate).content.metric_records["metrics"]
    # one fused message does both
    reply = app.train(message(MessageType.TRAIN, arrays1,
                              **{"server-round": 2, EVALUATE_ROUND: 1}), fused)
    assert EVAL_RECORD in reply.content.metric_records
    assert reply.content.metric_records[EVAL_COST]["seconds"] >= 0
    train_part, eval_part, _ = split_reply(reply)
    got = dict(eval_part.content.metric_records["metrics"])
    assert set(got) == set(evaluated)
    for key, value in evaluated.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # evaluated before training: the node's rows after round 2 score the model differently
    assert any(abs(after[k] - got[k]) > 1e-6 for k in got if k.startswith("valid/"))
    want = from_record(trained.content.array_records["arrays"])
    have = from_record(train_part.content.array_records["arrays"])
    assert set(have) == set(want)
    for key in want:
        np.testing.assert_allclose(have[key], want[key], atol=1e-7)
    assert set(train_part.content.metric_records) == {"metrics"}


def test_a_train_message_without_the_request_is_a_plain_train_reply(small_config):
    cfg = parse_run_config(small_config | {"num-nodes": 2})
    arrays = to_record(MF(0, cfg.synthetic_items, dim=cfg.dim, seed=1).shared_state())
    reply = app.train(message(MessageType.TRAIN, arrays, **{"server-round": 1}), node(cfg))
    assert EVAL_RECORD not in reply.content.metric_records
    _, evaluation, seconds = split_reply(reply)
    assert evaluation is None and seconds == 0.0


def test_a_failed_training_still_replies_the_evaluation_and_the_reverse(small_config,
                                                                        monkeypatch):
    cfg = parse_run_config(small_config | {"num-nodes": 2, "dim": 8})
    arrays = to_record(MF(0, cfg.synthetic_items, dim=8, seed=1).shared_state())
    evaluated = app.evaluate(message(MessageType.EVALUATE, arrays, **{"server-round": 1}),
                             node(cfg)).content.metric_records["metrics"]
    fused = message(MessageType.TRAIN, arrays, **{"server-round": 2, EVALUATE_ROUND: 1})

    def boom(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fedavg_node, "train", boom)
    reply = app.train(fused, node(cfg))
    assert not reply.has_error() and TRAIN_ERROR in reply.content.config_records
    train_part, eval_part, _ = split_reply(reply)
    assert train_part.error.reason == "<class 'RuntimeError'>:<'disk full'>"
    got = eval_part.content.metric_records["metrics"]
    for key, value in evaluated.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key

    monkeypatch.undo()
    monkeypatch.setattr(fedavg_node, "evaluate", boom)
    reply = app.train(fused, node(cfg))
    assert EVAL_ERROR in reply.content.config_records
    train_part, eval_part, _ = split_reply(reply)
    assert eval_part.has_error() and "disk full" in eval_part.error.reason
    assert "arrays" in train_part.content.array_records  # trained all the same
