"""Talking to nodes: wait for registration, send messages and stream the replies back.

Besides the strategy's messages, the server sends two kinds of ``query`` messages itself:
``query.partition`` (which bucket a node hosts and its sizes: the server learns the number of
users and items from the nodes, see :mod:`florec.server.federation`) and ``query.store``
(snapshot or restore every node's store at a checkpoint round).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.recdata.errors import ConfigError, DataError

PARTITION = f"{MessageType.QUERY}.partition"
STORE = f"{MessageType.QUERY}.store"


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
    """Push messages and yield their replies in the order of ``messages``, each once it is in.

    Flower hands replies over in arrival order, which changes from run to run (Ray workers
    finish in any order; the in-process grid iterates a set of random message ids), and a
    strategy that folds replies into a float sum would then differ in its last bits between
    two runs of one config. So only the reply of the first message still waiting is pulled;
    later replies wait in the SuperLink (behind a slow first node it may hold up to all N
    replies: the bound on memory is the ServerApp's alone), the ServerApp holds one at a time
    (a strategy's order is its nodes' partition order,
    :meth:`florec.strategies.base.RecStrategy.in_node_order`). Polling backs off from 5 ms
    to 0.2 s, not Flower's 3 s step.

    Each reply is attributed to the node its message went to (an error that the SuperLink
    writes for an unreachable node would otherwise name the SuperLink). Once ``timeout_s``
    has passed, the replies that are in are yielded (still in order) and the nodes whose
    replies are missing are logged, added to ``missing`` and given up on.
    """
    messages = list(messages)
    pushed = list(grid.push_messages(messages))
    dst = {mid: m.metadata.dst_node_id for mid, m in zip(pushed, messages, strict=True)}
    deadline = time.monotonic() + timeout_s
    for i, mid in enumerate(pushed):
        pause = 0.005
        while not (got := _replies_to(grid.pull_messages([mid]), {mid})):
            if time.monotonic() > deadline:
                yield from _late_replies(grid, pushed[i:], dst, timeout_s, missing)
                return
            pause = min(pause * 2, 0.2)
            time.sleep(pause)
        yield _attributed(got[0], dst)


def _replies_to(pulled: Iterable[Message], mids: set[str]) -> list[Message]:
    """The pulled messages that reply to one of ``mids`` (a pull can also return other ones)."""
    return [m for m in pulled if m.metadata.reply_to_message_id in mids]


def _attributed(msg: Message, dst: dict[str, int]) -> Message:
    """``msg`` with its source set to the node its message went to."""
    mid = msg.metadata.reply_to_message_id
    if mid in dst:
        msg.metadata.__dict__["_src_node_id"] = dst[mid]
    return msg


def _late_replies(grid: Grid, waiting: list[str], dst: dict[str, int], timeout_s: float,
                  missing: set[int] | None) -> Iterator[Message]:
    """After the deadline: the replies to ``waiting`` that are in, in order; log the rest."""
    arrived: dict[str, Message] = {}
    while (left := [m for m in waiting if m not in arrived]) and \
            (got := _replies_to(grid.pull_messages(left), set(left))):
        arrived |= {msg.metadata.reply_to_message_id: msg for msg in got}
    for mid in waiting:
        if mid in arrived:
            yield _attributed(arrived[mid], dst)
    lost = sorted(dst[m] for m in waiting if m not in arrived)
    if lost:
        log(WARNING, "no reply from node(s) %s after %.0f s: continuing without them",
            ", ".join(map(str, lost)), timeout_s)
        if missing is not None:
            missing.update(lost)


def _query(grid: Grid, kind: str, config: dict, timeout_s: float
           ) -> tuple[dict[int, Message], list[int]]:
    """Send one ``kind`` message to every node; (node id -> good reply, failed node ids)."""
    nodes = sorted(grid.get_node_ids())
    messages = [Message(content=RecordDict({"config": ConfigRecord(dict(config))}),
                        message_type=kind, dst_node_id=n) for n in nodes]
    good, missing = {}, set()
    for reply in stream_replies(grid, messages, timeout_s, missing):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "%s failed on node %s: %s", kind, node, reply.error.reason)
            continue
        good[node] = reply
    return good, sorted(set(nodes) - set(good))


def learn_partitions(grid: Grid, timeout_s: float
                     ) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    """Ask every node ``query.partition``: (node id -> its reply's metrics, node id -> error).

    A node's reply holds its partition id and sizes (see :func:`florec.client.app.partition`);
    a node that failed or did not answer in ``timeout_s`` is in the second dict with the reason.
    """
    nodes = sorted(grid.get_node_ids())
    messages = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=PARTITION,
                        dst_node_id=n) for n in nodes]
    facts: dict[int, dict[str, float]] = {}
    failed: dict[int, str] = {}
    for reply in stream_replies(grid, messages, timeout_s):
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            failed[node] = reply.error.reason
        else:
            facts[node] = dict(reply.content.metric_records["metrics"])
    failed |= {n: f"no reply in {timeout_s:.0f} s" for n in nodes if n not in facts | failed}
    return facts, failed


def snapshot_nodes(grid: Grid, checkpoint_dir: str, server_round: int, timeout_s: float
                   ) -> list[int]:
    """Ask every node to snapshot its store for ``server_round``; returns the nodes that failed."""
    _, failed = _query(grid, STORE, {"action": "snapshot", "round": server_round,
                                     "checkpoint-dir": checkpoint_dir}, timeout_s)
    return failed


def restore_nodes(grid: Grid, checkpoint_dir: str, server_round: int, timeout_s: float) -> None:
    """Ask every node to restore its store from the snapshot of ``server_round``.

    Raises
    ------
    DataError
        If a node cannot restore (its snapshot is missing or unreadable).

    """
    _, failed = _query(grid, STORE, {"action": "restore", "round": server_round,
                                     "checkpoint-dir": checkpoint_dir}, timeout_s)
    if failed:
        raise DataError(f"node(s) {', '.join(map(str, failed))} could not restore their store "
                        f"of round {server_round} from {checkpoint_dir} (see the log); restart "
                        "the run without resume")
    log(INFO, "every node restored its store of round %d", server_round)
