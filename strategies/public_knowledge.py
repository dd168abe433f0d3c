"""Server side of the attacks' public knowledge: two setup stages before round 1 (issue 18).

The strategies that run poisoning attacks or measure target exposure
(:class:`florec.strategies.robust.RobustFedAvgRec`,
:class:`florec.strategies.robust.RobustFedCIA`) mix in :class:`PublicKnowledge`: it asks every
node for its public facts (``stage=report``), combines them
(:func:`florec.protocol.public_knowledge.combine_reports`) and sends the result to every node
(``stage=publish``). The server touches no interaction data: it sums the popularity vectors and
concatenates the public pairs that the nodes sent, which the attack model declares public.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import from_record, to_record
from florec.protocol.public_knowledge import SETUP, combine_reports

__all__ = ["PublicKnowledge"]

SETUP_TYPE = f"{MessageType.TRAIN}.setup"
REPORT_KEYS = ("popularity", "num_users", "public_user", "public_item")


class PublicKnowledge:
    """Mixin for a :class:`florec.strategies.base.RecStrategy`: the ``attack-knowledge`` setup.

    Active when :attr:`knowledge` is true (set by the subclass from
    :func:`florec.client.attacks.needs_knowledge`); otherwise it sends nothing.
    """

    knowledge: bool = False
    published: dict | None = None
    _asked: int = 0

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Stage 0 asks every node for its report, stage 1 publishes the combination."""
        if not self.knowledge or stage > 1:
            return []
        nodes = sorted(grid.get_node_ids())
        self._asked = len(nodes)
        if stage == 0:
            config = ConfigRecord({"setup": SETUP, "stage": "report"})
            return self.messages(RecordDict({"config": config}), nodes, SETUP_TYPE)
        config = ConfigRecord({"setup": SETUP, "stage": "publish"})
        record = RecordDict({"config": config, "arrays": to_record(self.published)})
        return self.messages(record, nodes, SETUP_TYPE)

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Combine the reports (stage 0); check every node kept the publication (stage 1).

        Raises
        ------
        RuntimeError
            A node failed either stage: the targets and the attack would differ between nodes.

        """
        reports = []
        for msg in replies:
            if msg.has_error():
                raise RuntimeError(f"node {msg.metadata.src_node_id} failed the {SETUP} setup "
                                   f"(stage {stage}): {msg.error.reason}")
            if stage == 0:
                up = from_record(msg.content.array_records["arrays"])
                missing = set(REPORT_KEYS) - set(up)
                if missing:
                    raise RuntimeError(f"node {msg.metadata.src_node_id} sent a {SETUP} report "
                                       f"without {sorted(missing)}")
                reports.append(up)
        if stage == 0 and len(reports) < self._asked:  # a timeout: partial counts would
            raise RuntimeError(f"{SETUP} setup: {len(reports)} of {self._asked} nodes reported "
                               "(the others timed out); the targets and the attack would differ "
                               "from the full federation's: raise round-timeout-s and rerun")
        if stage == 0:
            self.published = combine_reports(reports)
            log(INFO, "%s: popularity of %d users and %d public interactions from %d nodes",
                SETUP, int(self.published["num_users"][0]),
                len(self.published["public_user"]), len(reports))
        return arrays
