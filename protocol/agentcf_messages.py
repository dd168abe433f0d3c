"""The message format AgentCF's nodes and server share: one ``agentcf`` config record.

Both sides import it from here, so a node never imports server code and the server never
imports a node's module (:mod:`florec.client.agentcf_node`, :mod:`florec.strategies.agentcf`).

Under ``flwr run`` each kind travels as a Flower message type (:data:`MESSAGE_TYPES`): the
training steps as ``train.agentcf``, the ranking as ``evaluate.agentcf``, and the server's
questions (``partition``, ``catalogue``, ``tags``) as ``query.agentcf`` with the kind in the
record's ``request`` key.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

#: the config record every AgentCF message carries
RECORD = "agentcf"
#: AgentCF message kind -> Flower message type
MESSAGE_TYPES = {"train": "train.agentcf", "evaluate": "evaluate.agentcf",
                 "partition": "query.agentcf", "catalogue": "query.agentcf",
                 "tags": "query.agentcf"}


def message(**values: Any) -> RecordDict:
    """A ``RecordDict`` holding ``values`` in the ``agentcf`` config record."""
    return RecordDict({RECORD: ConfigRecord(values)})


def kind_of(message_type: str, content: RecordDict) -> str:
    """The AgentCF kind of a received Flower message (``train``, ``evaluate`` or its request).

    Raises
    ------
    ValueError
        The message type is not one of :data:`MESSAGE_TYPES`.

    """
    if message_type == MESSAGE_TYPES["train"]:
        return "train"
    if message_type == MESSAGE_TYPES["evaluate"]:
        return "evaluate"
    if message_type == MESSAGE_TYPES["tags"]:
        return str(content[RECORD]["request"])
    raise ValueError(f"message type {message_type!r} is not AgentCF's; use one of "
                     f"{sorted(set(MESSAGE_TYPES.values()))}")
