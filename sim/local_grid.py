"""An in-process Grid: runs the ClientApp's handlers directly, without a SuperLink or Ray.

For tests and quick experiments: the ServerApp logic, the ClientApp handlers and the messages
are the real ones, only transport and process isolation are skipped. Node state persists in one
``Context`` per node, as in a Flower simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Handler = Callable[[Message, Context], Message]


class LocalGrid(Grid):
    """Nodes with ``partition-id`` ``0..num_nodes-1``, handled in this process.

    Node ids are ``1..num_nodes`` in partition order, or random 63-bit ids (as Flower assigns
    them) with ``random_ids``.

    Parameters
    ----------
    run_config : dict
        The run config every node sees.
    num_nodes : int
        Number of virtual nodes.
    handlers : dict, optional
        Message type -> handler; defaults to the FloRec ClientApp's train, setup, align,
        evaluate and AgentCF's ``*.agentcf``. The ClientApp's ``query.*`` handlers (which the
        server itself sends: sizes, item text, store snapshots) are added unless given here.
    fail : callable, optional
        ``fail(partition_id, message_type) -> bool``: raise in that node (failure tests).
    keep_replies : bool
        Keep every message the server sends in ``sent`` and every reply in ``received`` (for
        tests that inspect what travels; benchmarks turn it off to save memory).
    random_ids : int, optional
        Seed of random node ids (None: ids ``1..num_nodes``).
    node_config : dict, optional
        Extra node config every node sees (e.g. ``state-dir``).
    lose : callable, optional
        ``lose(message)``: true for a message whose reply never arrives (the node handles it,
        then the reply is lost: a timeout after the work was done).

    """

    def __init__(
        self,
        run_config: dict[str, Any],
        num_nodes: int,
        handlers: dict[str, Handler] | None = None,
        fail: Callable[[int, str], bool] | None = None,
        keep_replies: bool = True,
        random_ids: int | None = None,
        node_config: dict[str, Any] | None = None,
        lose: Callable[[Message], bool] | None = None,
    ) -> None:
        from florec.client.app import (
            agentcf_evaluate,
            agentcf_query,
            agentcf_train,
            align,
            catalogue,
            evaluate,
            partition,
            setup,
            store,
            train,
        )

        queries = {f"{MessageType.QUERY}.partition": partition,  # the server's own queries
                   f"{MessageType.QUERY}.catalogue": catalogue,
                   f"{MessageType.QUERY}.store": store}
        if handlers is None:
            handlers = {MessageType.TRAIN: train, f"{MessageType.TRAIN}.align": align,
                        f"{MessageType.TRAIN}.setup": setup,
                        MessageType.EVALUATE: evaluate,
                        f"{MessageType.TRAIN}.agentcf": agentcf_train,  # AgentCF's step loop
                        f"{MessageType.EVALUATE}.agentcf": agentcf_evaluate,
                        f"{MessageType.QUERY}.agentcf": agentcf_query}
        handlers = queries | handlers
        self.handlers, self.fail, self.lose = handlers, fail, lose
        for attr in ("_run_id", "_task_id", "_node_id"):  # what a Flower process would set
            if getattr(TaskIdentity, attr) is None:
                setattr(TaskIdentity, attr, 1)
        ids = list(range(1, num_nodes + 1)) if random_ids is None else \
            np.random.default_rng(random_ids).choice(2**62, num_nodes, replace=False).tolist()
        self.contexts = {
            int(node): Context(
                run_id=1,
                node_id=int(node),
                node_config={"partition-id": pid, "num-partitions": num_nodes,
                             **(node_config or {})},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid, node in enumerate(ids)
        }
        self._queued: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.keep_replies = keep_replies
        self.pushed: dict[str, int] = {}  # message type -> messages pushed

    def set_run(self, run: Any) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self) -> Any:
        """The run set with :meth:`set_run` (unused here)."""
        return getattr(self, "_run", None)

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str = "",
        ttl: float | None = None,
    ) -> Message:  # noqa: D102
        return Message(
            content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue messages; each is handled when its reply is pulled (one at a time)."""
        ids = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            self._queued[msg_id] = msg
            if self.keep_replies:
                self.sent.append(msg)
            kind = msg.metadata.message_type
            self.pushed[kind] = self.pushed.get(kind, 0) + 1
            ids.append(msg_id)
        return ids

    def _handle(self, msg: Message) -> Message:
        ctx = self.contexts[msg.metadata.dst_node_id]
        pid = int(ctx.node_config["partition-id"])
        try:
            if self.fail is not None and self.fail(pid, msg.metadata.message_type):
                raise RuntimeError(f"injected failure on partition {pid}")
            handler = self.handlers.get(msg.metadata.message_type)
            if handler is None:
                raise ValueError(f"no handler for message type {msg.metadata.message_type}")
            reply = handler(msg, ctx)
        except Exception as exc:  # a crashing client becomes an error reply, as in Flower
            reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        if self.keep_replies:
            self.received.append(reply)
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Handle the first queued message among ``message_ids`` and return its reply.

        One reply per call, so a streaming consumer holds one reply at a time, as with a real
        SuperLink.
        """
        for msg_id in message_ids:
            if msg_id in self._queued:
                msg = self._queued.pop(msg_id)
                reply = self._handle(msg)
                if self.lose is not None and self.lose(msg):
                    continue  # handled, but the reply never arrives
                return [reply]
        return []

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:  # noqa: D102
        ids = list(self.push_messages(messages))
        return [reply for i in ids for reply in self.pull_messages([i])]
