"""The fused round message: round r's train message also asks for round r-1's evaluation.

With ``fused-evaluate=true`` the server does not send an ``evaluate`` message after round r-1;
the train message of round r carries the same global arrays (they *are* round r-1's model) and
``config[EVALUATE_ROUND] = r - 1``. The node first evaluates those arrays, exactly as an
``evaluate`` message of round r-1 would (:func:`evaluation_request` rebuilds that message), then
trains, and its reply carries both: the training reply as usual plus the evaluation's metric
sums under :data:`EVAL_RECORD` and the node's evaluation seconds under :data:`EVAL_COST`.
A part that raised on the node travels as its error instead (:data:`TRAIN_ERROR`,
:data:`EVAL_ERROR`: the code and reason a separate error reply would carry), so a node whose
training fails still delivers its evaluation, and the reverse. The server splits the reply back
into a training reply and an evaluation reply (:func:`split_reply`), so every strategy
aggregates them with its unchanged hooks.

Numpy and ``flwr.app`` only: a node imports this without torch.
"""

from __future__ import annotations

import copy

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

#: train config key: the round whose global model the message's arrays are (0: not fused)
EVALUATE_ROUND = "fused-evaluate-round"
#: reply key of the evaluation's metric sums (what an ``evaluate`` reply holds as ``metrics``)
EVAL_RECORD = "fused-evaluate"
#: reply key of ``{"seconds": ...}``, the node's own evaluation time
EVAL_COST = "fused-evaluate-cost"
#: reply key of ``{"code": ..., "reason": ...}`` in place of the training reply when it raised
TRAIN_ERROR = "fused-train-error"
#: reply key of ``{"code": ..., "reason": ...}`` in place of :data:`EVAL_RECORD` when it raised
EVAL_ERROR = "fused-evaluate-error"
#: Flower's ``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``: what a ClientApp that raised replies
CLIENT_APP_RAISED_EXCEPTION = 2
_FUSED_KEYS = (EVAL_RECORD, EVAL_COST, TRAIN_ERROR, EVAL_ERROR)


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


def error_record(exc: BaseException) -> ConfigRecord:
    """The error a ClientApp that raised ``exc`` replies, as Flower writes it.

    ``{"code": 2, "reason": "<class 'RuntimeError'>:<'boom'>"}`` (Flower's SuperNode and
    simulation engine format the reason so).
    """
    reason = str(type(exc)) + ":<'" + str(exc) + "'>"
    return ConfigRecord({"code": CLIENT_APP_RAISED_EXCEPTION, "reason": reason})


def attach_evaluation(train: RecordDict | BaseException, evaluation: RecordDict | BaseException,
                      seconds: float) -> RecordDict:
    """The fused reply: the training reply plus the evaluation's metric sums and seconds.

    A part given as the exception it raised travels as its error (:func:`error_record`) under
    :data:`TRAIN_ERROR` or :data:`EVAL_ERROR`.
    """
    reply = RecordDict() if isinstance(train, BaseException) else train
    if isinstance(train, BaseException):
        reply[TRAIN_ERROR] = error_record(train)
    if isinstance(evaluation, BaseException):
        reply[EVAL_ERROR] = error_record(evaluation)
    else:
        reply[EVAL_RECORD] = evaluation.metric_records["metrics"]
    reply[EVAL_COST] = MetricRecord({"seconds": float(seconds)})
    return reply


def _part(msg: Message, content: RecordDict, error: ConfigRecord | None) -> Message:
    meta = copy.copy(msg.metadata)
    if error is not None:
        return Message(error=Error(code=int(error["code"]), reason=str(error["reason"])),
                       metadata=meta)
    return Message(content=content, metadata=meta)


def split_reply(msg: Message) -> tuple[Message, Message | None, float]:
    """(training reply, evaluation reply or None, the node's evaluation seconds).

    A part that failed on the node comes back as an error reply of that part, as a separate
    message would. An error reply of the whole message (the node failed outside the two
    handlers, e.g. loading its data) is the training reply; its evaluation is None (missing,
    not failed: it is not known to fail). So is the evaluation of a reply without one (a node
    that ignored the request).
    """
    if msg.has_error():
        return msg, None, 0.0
    content = msg.content
    train_error = content.config_records.get(TRAIN_ERROR)
    eval_error = content.config_records.get(EVAL_ERROR)
    if EVAL_RECORD not in content.metric_records and eval_error is None:
        return msg, None, 0.0
    train = RecordDict({key: record for key, record in content.items()
                        if key not in _FUSED_KEYS})
    evaluation = RecordDict() if eval_error is not None else RecordDict(
        {"metrics": content.metric_records[EVAL_RECORD]})
    cost = content.metric_records.get(EVAL_COST, MetricRecord({"seconds": 0.0}))
    return (_part(msg, train, train_error), _part(msg, evaluation, eval_error),
            float(cost["seconds"]))
