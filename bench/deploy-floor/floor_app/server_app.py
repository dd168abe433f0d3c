"""The floor's ServerApp: FedAvg of one numpy array, FloRec's round pattern and reply polling.

Per round it sends every node a train message and then an evaluate message (``messages =
"separate"``), or one train message that also evaluates the model it carries (``"fused"``, plus
one evaluate message after the last round). Replies are pulled in arrival order with FloRec's
polling backoff (5 ms to 0.2 s, not the 3 s of ``Grid.send_and_receive``); FloRec's server
(:func:`florec.server.loop.stream_replies`) now pulls them in partition order instead, one
message id at a time, which the floor does not reproduce. Each round's
wall-clock start and end go to ``<out-dir>/rounds.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _exchange(grid: Grid, messages: list[Message], timeout_s: float) -> list[Message]:
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline, pause = time.monotonic() + timeout_s, 0.005
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        pause = 0.005 if got else min(pause * 2, 0.2)
        if pending and not got:
            time.sleep(pause)
    if pending or any(m.has_error() for m in replies):
        raise RuntimeError(f"{len(pending)} replies missing or failed: "
                           f"{[m.error.reason for m in replies if m.has_error()]}")
    return replies


def _send(grid: Grid, nodes: list[int], kind: str, w: np.ndarray, evaluate: int,
          timeout_s: float) -> list[Message]:
    return _exchange(grid, [Message(RecordDict({"arrays": ArrayRecord([w]), "config": ConfigRecord(
        {"evaluate": evaluate})}), message_type=kind, dst_node_id=n) for n in nodes], timeout_s)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` FedAvg rounds on ``num-nodes`` nodes; log each round's wall time."""
    cfg = context.run_config
    rounds, fused = int(cfg["num-rounds"]), str(cfg["messages"]) == "fused"
    timeout_s = float(cfg["round-timeout-s"])
    out = Path(str(cfg["out-dir"]) or ".")
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < int(cfg["num-nodes"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} nodes connected")
        time.sleep(0.2)
    query = RecordDict({"config": ConfigRecord({})})
    _exchange(grid, [Message(query, message_type=f"{MessageType.QUERY}.partition",
                             dst_node_id=n) for n in nodes], timeout_s)
    w = np.zeros((int(cfg["dim"]), 1))
    with (out / "rounds.jsonl").open("w") as fh:
        for rnd in range(1, rounds + 1):
            start = time.time()
            replies = _send(grid, nodes, MessageType.TRAIN, w, int(fused and rnd > 1), timeout_s)
            sizes = [float(m.content["metrics"]["num-examples"]) for m in replies]
            arrays = [m.content["arrays"].to_numpy_ndarrays()[0] for m in replies]
            w = sum(s * a for s, a in zip(sizes, arrays, strict=True)) / sum(sizes)
            if not fused:
                _send(grid, nodes, MessageType.EVALUATE, w, 1, timeout_s)
            fh.write(json.dumps({"round": rnd, "start": start, "end": time.time()}) + "\n")
            fh.flush()
        if fused:
            _send(grid, nodes, MessageType.EVALUATE, w, 1, timeout_s)
