"""Talking to nodes: wait for registration, send messages and stream the replies back."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from logging import INFO, WARNING

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from recdata.errors import ConfigError


def wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> list[int]:
    """Block until ``expected`` nodes are registered; fail clearly on too few or too many.

    Raises
    ------
    ConfigError
        If a different number of nodes is connected after ``timeout_s`` (or more appear).

    """
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) == expected:
            return nodes
        if len(nodes) > expected or time.monotonic() > deadline:
            raise ConfigError(
                f"{len(nodes)} nodes are connected but the partition has {expected} buckets; "
                f"start {expected} nodes (simulation: --federation-config "
                f"'num-supernodes={expected}') or set -c 'num-nodes={len(nodes)}'"
            )
        if len(nodes) != last:
            log(INFO, "waiting for nodes: %d of %d registered", len(nodes), expected)
            last = len(nodes)
        time.sleep(0.2)


def stream_replies(grid: Grid, messages: Iterable[Message], timeout_s: float,
                   missing: set[int] | None = None) -> Iterator[Message]:
    """Push messages and yield each reply as soon as it is pulled (no 3 s polling step).

    Each reply is attributed to the node its message went to (an error that the SuperLink
    writes for an unreachable node would otherwise name the SuperLink). Nodes whose replies are
    still missing after ``timeout_s`` are logged, added to ``missing`` and given up on.
    """
    messages = list(messages)
    pushed = list(grid.push_messages(messages))
    dst = {mid: m.metadata.dst_node_id for mid, m in zip(pushed, messages, strict=True)}
    pending = set(pushed)
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while pending:
        got = list(grid.pull_messages(pending))
        for msg in got:
            mid = msg.metadata.reply_to_message_id
            pending.discard(mid)
            if mid in dst:
                msg.metadata.__dict__["_src_node_id"] = dst[mid]
            yield msg
        if not pending:
            return
        if time.monotonic() > deadline:
            lost = sorted(dst[m] for m in pending)
            log(WARNING, "no reply from node(s) %s after %.0f s: continuing without them",
                ", ".join(map(str, lost)), timeout_s)
            if missing is not None:
                missing.update(lost)
            return
        if got:
            pause = 0.005
            continue
        pause = min(pause * 2, 0.2)
        time.sleep(pause)
