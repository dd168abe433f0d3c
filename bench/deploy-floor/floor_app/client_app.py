"""The floor's ClientApp: numpy only, a few microseconds of work per message.

Each handler does what a FloRec node does in shape (read the model, a step of local work,
reply with arrays and metrics) with none of its cost, so a message costs what Flower's
process isolation costs. With ``FLOREC_PHASE_LOG`` set, every message appends one JSON line of
wall-clock stamps (process start, app import start and end, handler start and end).
"""

from __future__ import annotations

import json
import os
import time

_IMPORT_START = time.time()

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

_IMPORT_END = time.time()
app = ClientApp()


def _process_start() -> float:
    """Wall-clock time this process was created (Linux ``/proc``), 0 if unknown."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in open("/proc/stat")
                     if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return 0.0


def _log(kind: str, context: Context, start: float) -> None:
    path = os.environ.get("FLOREC_PHASE_LOG")
    if path:
        row = {"app": "floor", "kind": kind, "node": int(context.node_config["partition-id"]),
               "pid": os.getpid(), "proc_start": _process_start(), "import_start": _IMPORT_START,
               "import_end": _IMPORT_END, "handler_start": start, "data_end": start,
               "handler_end": time.time()}
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _data(context: Context) -> np.ndarray:
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    return rng.standard_normal((int(context.run_config["rows"]), int(context.run_config["dim"])))


def _evaluate(w: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean((x @ w) ** 2))


def _train(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return w - 0.01 * (x.T @ (x @ w)) / len(x)


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """The node's partition and size."""
    start = time.time()
    x = _data(context)
    reply = RecordDict({"metrics": MetricRecord(
        {"partition-id": int(context.node_config["partition-id"]), "num-users": len(x)})})
    _log("query", context, start)
    return Message(reply, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One gradient step of a least-squares model; with ``evaluate=1`` evaluate it first."""
    start = time.time()
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    x = _data(context)
    metrics = {"num-examples": len(x)}
    if int(msg.content["config"]["evaluate"]):
        metrics["loss"] = _evaluate(w, x)
    reply = RecordDict({"arrays": ArrayRecord([_train(w, x)]),
                        "metrics": MetricRecord(metrics)})
    _log("train+evaluate" if "loss" in metrics else "train", context, start)
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The loss of the received model on the node's rows."""
    start = time.time()
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    x = _data(context)
    reply = RecordDict({"metrics": MetricRecord({"loss": _evaluate(w, x),
                                                 "num-examples": len(x)})})
    _log("evaluate", context, start)
    return Message(reply, reply_to=msg)
