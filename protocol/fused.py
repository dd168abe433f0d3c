"""The fused round message: round r's train message also asks for round r-1's evaluation.

With ``fused-evaluate=true`` the server does not send an ``evaluate`` message after round r-1;
the train message of round r carries the same global arrays (they *are* round r-1's model) and
``config[EVALUATE_ROUND] = r - 1``. The node first evaluates those arrays, exactly as an
``evaluate`` message of round r-1 would (:func:`evaluation_request` rebuilds that message), then
trains, and its reply carries both: the training reply as usual plus the evaluation's metric
sums under :data:`EVAL_RECORD` and the node's evaluation seconds under :data:`EVAL_COST`.
The server splits the reply back into a training reply and an evaluation reply
(:func:`split_reply`), so every strategy aggregates them with its unchanged hooks.

Numpy and ``flwr.app`` only: a node imports this without torch.
"""

from __future__ import annotations

import copy

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

#: train config key: the round whose global model the message's arrays are (0: not fused)
EVALUATE_ROUND = "fused-evaluate-round"
#: reply key of the evaluation's metric sums (what an ``evaluate`` reply holds as ``metrics``)
EVAL_RECORD = "fused-evaluate"
#: reply key of ``{"seconds": ...}``, the node's own evaluation time
EVAL_COST = "fused-evaluate-cost"


def evaluation_request(msg: Message) -> Message | None:
    """The ``evaluate`` message a fused train message carries, or None if it is not fused.

    Its content is what :meth:`florec.strategies.base.RecStrategy.configure_evaluate` sends:
    the message's arrays and ``{"server-round": r - 1}``.
    """
    config = msg.content.config_records.get("config")
    evaluate_round = int(config.get(EVALUATE_ROUND, 0)) if config is not None else 0
    if evaluate_round <= 0:
        return None
    content = RecordDict({"arrays": msg.content.array_records["arrays"],
                          "config": ConfigRecord({"server-round": evaluate_round})})
    return Message(content=content, metadata=copy.copy(msg.metadata))


def attach_evaluation(train: RecordDict, evaluation: RecordDict, seconds: float) -> RecordDict:
    """The fused reply: the training reply plus the evaluation's metric sums and seconds."""
    train[EVAL_RECORD] = evaluation.metric_records["metrics"]
    train[EVAL_COST] = MetricRecord({"seconds": float(seconds)})
    return train


def split_reply(msg: Message) -> tuple[Message, Message | None, float]:
    """(training reply, evaluation reply or None, the node's evaluation seconds).

    An error reply (the node failed) is returned as both: its training and its evaluation are
    lost. A reply without an evaluation (a node that ignored the request) gives None.
    """
    if msg.has_error():
        return msg, msg, 0.0
    content = msg.content
    if EVAL_RECORD not in content.metric_records:
        return msg, None, 0.0
    train = RecordDict({key: record for key, record in content.items()
                        if key not in (EVAL_RECORD, EVAL_COST)})
    evaluation = RecordDict({"metrics": content.metric_records[EVAL_RECORD]})
    cost = content.metric_records.get(EVAL_COST, MetricRecord({"seconds": 0.0}))
    meta = msg.metadata
    return (Message(content=train, metadata=copy.copy(meta)),
            Message(content=evaluation, metadata=copy.copy(meta)), float(cost["seconds"]))
