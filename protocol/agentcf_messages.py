"""The message format AgentCF's nodes and server share: one ``agentcf`` config record.

Both sides import it from here, so a node never imports server code and the server never
imports a node's module (:mod:`florec.client.agentcf_node`, :mod:`florec.strategies.agentcf`).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

#: the config record every AgentCF message carries
RECORD = "agentcf"


def message(**values: Any) -> RecordDict:
    """A ``RecordDict`` holding ``values`` in the ``agentcf`` config record."""
    return RecordDict({RECORD: ConfigRecord(values)})
