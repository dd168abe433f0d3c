"""Server side of the attacks' public knowledge: setup stages before round 1 (issue 18).

The strategies that run poisoning attacks or measure target exposure
(:class:`florec.strategies.robust.RobustFedAvgRec`,
:class:`florec.strategies.robust.RobustFedCIA`,
:class:`florec.strategies.robust_params.RobustFedAvgParams`) mix in :class:`PublicKnowledge`.
Five ``train.setup`` stages (:mod:`florec.protocol.public_knowledge`):

0. ``report``: every node joins a secure aggregation of its per-item training counts and user
   count and replies with its public keys and its public pairs (public by the attack model);
1. to 3. ``share``, ``mask``, ``unmask``: the exchanges of that secure aggregation
   (:class:`florec.server.secagg.SecAggSession`, as Fair Sampling's popularity), after which the
   server holds the sums and no node's counts;
4. ``publish``: the sums and the concatenated public pairs go to every node.

Every node must take part to the end: a partial sum would change the targets and the attack,
so a node that fails or times out at any stage stops the run with one line.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from florec.protocol.codec import from_record, to_record
from florec.protocol.public_knowledge import PUBLIC_KEYS, SETUP, publication
from florec.protocol.secagg_wire import STAGES, unpack
from florec.server.secagg import SETUP_TYPE, SecAggRefused, SecAggSession, public_keys, refusal

__all__ = ["PublicKnowledge"]

PUBLISH = len(STAGES) + 1  # the stage after report and the secure-sum exchanges


class PublicKnowledge:
    """Mixin for a :class:`florec.strategies.base.RecStrategy`: the ``attack-knowledge`` setup.

    Active when :attr:`knowledge` is true (set by the subclass from
    :func:`florec.client.attacks.needs_knowledge`); otherwise it sends nothing.
    """

    knowledge: bool = False
    published: dict | None = None
    _asked: int = 0
    _session: SecAggSession | None = None
    _pairs: list | None = None
    _info: str = ""

    def configure_setup(self, stage: int, arrays: ArrayRecord, grid: Grid) -> Iterable[Message]:
        """Stage 0 asks for the reports, 1-3 run the secure sum, 4 publishes the result."""
        if not self.knowledge or stage > PUBLISH:
            return []
        if stage == 0:
            nodes = sorted(grid.get_node_ids())
            self._asked = len(nodes)
            self._info = f"{SETUP}|{secrets.token_hex(8)}"  # this secure sum's name
            config = ConfigRecord({"setup": SETUP, "stage": "report", "secagg-nodes": len(nodes),
                                   "info": self._info})
            return self.messages(RecordDict({"config": config}), nodes, SETUP_TYPE)
        if stage < PUBLISH:
            records = self._session.records(STAGES[stage - 1])
            return [m for node, rec in records.items()
                    for m in self.messages(rec, [node], SETUP_TYPE)]
        config = ConfigRecord({"setup": SETUP, "stage": "publish"})
        record = RecordDict({"config": config, "arrays": to_record(self.published)})
        return self.messages(record, sorted(grid.get_node_ids()), SETUP_TYPE)

    def aggregate_setup(self, stage: int, arrays: ArrayRecord, replies: Iterable[Message]
                        ) -> ArrayRecord:
        """Fold the reports and the secure-sum exchanges; check every node kept the publication.

        Raises
        ------
        RuntimeError
            A node failed or timed out at some stage, or sent a report without its keys or
            public pairs: the targets and the attack would differ from the full federation's.
        florec.server.secagg.SecAggRefused
            A node refused to unmask (the server asked for what would expose a node).

        """
        good: dict[int, dict] = {}
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if (why := refusal(msg)) is not None:
                raise SecAggRefused(f"{SETUP} secure sum: node {node} refused: {why}")
            if msg.has_error():
                reason = msg.error.reason.strip().splitlines()[-1:] or [""]
                raise RuntimeError(f"node {node} failed the {SETUP} setup (stage {stage}): "
                                   f"{reason[0]}")
            if stage < PUBLISH:
                good[node] = from_record(msg.content.array_records["arrays"])
        if stage == PUBLISH:
            return arrays
        if len(good) < self._asked:  # a timeout: partial counts would change the targets
            what = "reported" if stage == 0 else f"answered {STAGES[stage - 1]}"
            raise RuntimeError(f"{SETUP} setup: {len(good)} of {self._asked} nodes {what} "
                               "(the others timed out); the targets and the attack would differ "
                               "from the full federation's: raise round-timeout-s and rerun")
        if stage == 0:
            self._start(good)
            return arrays
        self._session.take(STAGES[stage - 1], good)
        if self._session.total is not None:
            if len(self._session.alive) < self._asked:
                raise RuntimeError(f"{SETUP} setup: the secure sum holds {len(self._session.alive)}"
                                   f" of {self._asked} nodes' counts; the targets would differ "
                                   "from the full federation's: rerun")
            _, total, _ = unpack(self._session.total, 0, 1.0, self._asked,
                                 len(self._session.alive))
            self.published = publication(total, self._pairs)
            log(INFO, "%s: popularity of %d users by secure sum and %d public interactions "
                "from %d nodes", SETUP, int(self.published["num_users"][0]),
                len(self.published["public_user"]), len(self._session.alive))
        return arrays

    def _start(self, reports: dict[int, dict]) -> None:
        """The secure sum's roster from the reports' keys; keep their public pairs."""
        roster = {}
        for node, up in sorted(reports.items()):
            keys = public_keys(up)
            missing = [k for k in PUBLIC_KEYS if k not in up]
            if keys is None or missing:
                raise RuntimeError(f"node {node} sent a {SETUP} report without "
                                   f"{missing or 'valid public keys'}")
            roster[node] = keys
        self._pairs = [{k: reports[n][k] for k in PUBLIC_KEYS} for n in sorted(reports)]
        self._session = SecAggSession(self._info, roster)
