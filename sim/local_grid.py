"""An in-process Grid: runs the ClientApp's handlers directly, without a SuperLink or Ray.

For tests and quick experiments: the ServerApp logic, the ClientApp handlers and the messages
are the real ones, only transport and process isolation are skipped. Node state persists in one
``Context`` per node, as in a Flower simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Handler = Callable[[Message, Context], Message]


class LocalGrid(Grid):
    """Nodes ``1..num_nodes`` with ``partition-id`` ``0..num_nodes-1``, handled in this process.

    Parameters
    ----------
    run_config : dict
        The run config every node sees.
    num_nodes : int
        Number of virtual nodes.
    handlers : dict, optional
        Message type -> handler; defaults to the FloRec ClientApp's train and evaluate.
    fail : callable, optional
        ``fail(partition_id, message_type) -> bool``: raise in that node (failure tests).

    """

    def __init__(
        self,
        run_config: dict[str, Any],
        num_nodes: int,
        handlers: dict[str, Handler] | None = None,
        fail: Callable[[int, str], bool] | None = None,
    ) -> None:
        if handlers is None:
            from client.app import align, evaluate, train

            handlers = {MessageType.TRAIN: train, f"{MessageType.TRAIN}.align": align,
                        MessageType.EVALUATE: evaluate}
        self.handlers, self.fail = handlers, fail
        for attr in ("_run_id", "_task_id", "_node_id"):  # what a Flower process would set
            if getattr(TaskIdentity, attr) is None:
                setattr(TaskIdentity, attr, 1)
        self.contexts = {
            pid + 1: Context(
                run_id=1,
                node_id=pid + 1,
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.received: list[Message] = []

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
        """Handle each message at once; replies wait to be pulled."""
        ids = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            self.sent.append(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            pid = int(ctx.node_config["partition-id"])
            try:
                if self.fail is not None and self.fail(pid, msg.metadata.message_type):
                    raise RuntimeError(f"injected failure on partition {pid}")
                reply = self.handlers[msg.metadata.message_type](msg, ctx)
            except Exception as exc:  # a crashing client becomes an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            self.received.append(reply)
            self._replies[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:  # noqa: D102
        return self.pull_messages(self.push_messages(messages))
