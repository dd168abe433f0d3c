"""The fused reply's wire format (florec.protocol.fused)."""

import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from florec.protocol.fused import (
    EVAL_COST,
    EVAL_RECORD,
    EVALUATE_ROUND,
    TRAIN_ERROR,
    attach_evaluation,
    evaluation_request,
    split_reply,
)
from florec.sim.local_grid import LocalGrid


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    LocalGrid({}, 1, handlers={})  # Flower's run/task ids, as a Flower process sets them


def train_message(**config) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": 3, **config}),
                               "arrays": ArrayRecord()}),
                   dst_node_id=7, message_type=MessageType.TRAIN)


def test_the_request_is_the_evaluate_message_of_the_previous_round() -> None:
    assert evaluation_request(train_message()) is None
    request = evaluation_request(train_message(**{EVALUATE_ROUND: 2}))
    assert dict(request.content.config_records["config"]) == {"server-round": 2}
    assert "arrays" in request.content.array_records


def test_a_reply_splits_into_its_training_and_its_evaluation() -> None:
    msg = train_message(**{EVALUATE_ROUND: 2})
    train = RecordDict({"metrics": MetricRecord({"weight": 2.0})})
    evaluation = RecordDict({"metrics": MetricRecord({"valid/ndcg@10": 0.5, "partition-id": 1})})
    reply = Message(attach_evaluation(train, evaluation, 1.5), reply_to=msg)
    assert {EVAL_RECORD, EVAL_COST} <= set(reply.content.metric_records)
    train_part, eval_part, seconds = split_reply(reply)
    assert set(train_part.content) == {"metrics"} and seconds == 1.5
    assert dict(eval_part.content.metric_records["metrics"]) == {"valid/ndcg@10": 0.5,
                                                                 "partition-id": 1}
    assert eval_part.metadata.reply_to_message_id == reply.metadata.reply_to_message_id


def test_a_failed_message_is_a_failed_training_without_an_evaluation() -> None:
    failed = Message(Error(code=0, reason="boom"), reply_to=train_message())
    train_part, eval_part, seconds = split_reply(failed)
    assert train_part is failed and eval_part is None and seconds == 0.0


def test_a_failed_part_comes_back_as_that_part_s_error_reply() -> None:
    msg = train_message(**{EVALUATE_ROUND: 2})
    evaluation = RecordDict({"metrics": MetricRecord({"valid/ndcg@10": 0.5})})
    reply = Message(attach_evaluation(RuntimeError("no rows"), evaluation, 0.5), reply_to=msg)
    assert TRAIN_ERROR in reply.content.config_records
    train_part, eval_part, seconds = split_reply(reply)
    assert train_part.has_error() and not eval_part.has_error() and seconds == 0.5
    assert train_part.error.code == 2  # Flower's CLIENT_APP_RAISED_EXCEPTION
    assert train_part.error.reason == "<class 'RuntimeError'>:<'no rows'>"  # Flower's format
    assert dict(eval_part.content.metric_records["metrics"]) == {"valid/ndcg@10": 0.5}
    assert train_part.metadata.src_node_id == reply.metadata.src_node_id

    train = RecordDict({"metrics": MetricRecord({"weight": 2.0})})
    reply = Message(attach_evaluation(train, ValueError("bad"), 0.1), reply_to=msg)
    train_part, eval_part, _ = split_reply(reply)
    assert not train_part.has_error() and set(train_part.content) == {"metrics"}
    assert eval_part.has_error() and eval_part.error.reason == "<class 'ValueError'>:<'bad'>"
