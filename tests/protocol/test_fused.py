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


def test_a_failed_node_loses_both_parts() -> None:
    failed = Message(Error(code=0, reason="boom"), reply_to=train_message())
    train_part, eval_part, _ = split_reply(failed)
    assert train_part.has_error() and eval_part.has_error()
