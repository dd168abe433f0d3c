"""The AgentCF(++) server: item agents and group memories; it never sees a user memory.

:class:`AgentCFServer` drives nodes (:class:`florec.client.agentcf_node.AgentCFNode` or anything
with the same ``handle(kind, RecordDict)``) step by step:

1. ``train`` rounds: each node gets the item descriptions changed since its last round and
   returns its users' item reflections (text); the server applies them node by node, in the
   nodes' order (with contiguous user buckets this is the central run's order);
2. ``tags`` (AgentCF++ with groups, once): tags and recent training items per pseudonymous user
   -> MiniLM -> k-means -> groups -> group memories (here, on the server);
3. ``evaluate``: group memories down, metric sums up, pooled into MRR and NDCG@K.

Every message's size is its protobuf encoding (``flwr.common.serde``), counted up and down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import RecordDict
from flwr.common import serde

from florec.models.agentcf.groups import Groups, build_groups, group_memories
from florec.models.agentcf.memory import ItemMemories
from florec.models.agentcf.rank import K_LIST
from florec.protocol.agentcf_messages import RECORD, message


def nbytes(msg: RecordDict) -> int:
    """Serialized size of a message (protobuf)."""
    return int(serde.recorddict_to_proto(msg).ByteSize())


class AgentCFServer:
    """Item agents, groups and the round loop of a federated AgentCF(++) run.

    Parameters
    ----------
    item_text : list of str
        Public item text (the item agents' initial descriptions).
    item_domain, item_title : sequences
        Domain and title of each item (group memories).
    encoder : object, optional
        Sentence encoder for the tags (AgentCF++ groups).
    kmeans_k, n_groups, seed : int
        Group settings (``n_groups = 0``: no groups).
    on_message : callable, optional
        ``on_message(direction, kind, RecordDict)`` sees every message (tests scan them).

    """

    def __init__(self, item_text: list[str], item_domain, item_title: Sequence[str], *,
                 encoder: Any = None, kmeans_k: int = 32, n_groups: int = 0, seed: int = 0,
                 on_message=None) -> None:
        self.items = ItemMemories(item_text)
        self.item_domain, self.item_title = item_domain, list(item_title)
        self.encoder, self.kmeans_k, self.n_groups, self.seed = encoder, kmeans_k, n_groups, seed
        self.on_message = on_message
        self.bytes = {"up": 0, "down": 0, "item_text_up": 0}
        #: LLM statistics the nodes reported, per message kind (calls, cache hits, tokens, s)
        self.llm: dict[str, dict[str, float]] = {}
        self.groups: Groups | None = None
        self.group_texts: list[dict[int, str]] = []
        self.members: list[list[tuple[int, int]]] = []  # per group: (node, pseudonym)

    def _exchange(self, nodes, kind: str, msgs: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send ``msgs[k]`` to node ``k`` and return each node's reply (counted and logged).

        ``nodes`` is a sequence of objects with ``handle(kind, RecordDict)`` (answered one by
        one, in this process) or has ``exchange(kind, msgs)`` (all sent at once, e.g. through a
        Flower grid: :class:`florec.strategies.agentcf_flower.GridNodes`).
        """
        for k in sorted(msgs):
            self.bytes["down"] += nbytes(msgs[k])
            if self.on_message:
                self.on_message("down", kind, msgs[k])
        if hasattr(nodes, "exchange"):
            replies = nodes.exchange(kind, msgs)
        else:
            replies = {k: nodes[k].handle(kind, msgs[k]) for k in sorted(msgs)}
        for k in sorted(replies):
            self.bytes["up"] += nbytes(replies[k])
            if self.on_message:
                self.on_message("up", kind, replies[k])
            for key, value in replies[k][RECORD].items():
                if key.startswith("llm/"):
                    row = self.llm.setdefault(kind, {})
                    row[key[4:]] = row.get(key[4:], 0) + float(value)
        return replies

    def train(self, nodes: Sequence) -> dict[str, float]:
        """Step rounds until every node is done; returns decision counts and bytes."""
        seen_version = [dict() for _ in range(len(nodes))]  # item -> text each node holds
        done = [False] * len(nodes)
        step = decisions = correct = 0
        while not all(done):
            msgs = {}
            for k in range(len(nodes)):
                if done[k]:
                    continue
                changed = {i: t for i, t in self.items.learned.items()
                           if seen_version[k].get(i) != t}
                seen_version[k].update(changed)
                msgs[k] = message(step=step, items=list(changed), texts=list(changed.values()))
            replies = self._exchange(nodes, "train", msgs)
            for k in sorted(replies):  # applied after the round, in node order
                rec = replies[k][RECORD]
                for item, text in zip(rec["items"], rec["texts"], strict=True):
                    self.items.update(int(item), str(text))
                    self.bytes["item_text_up"] += len(str(text).encode())
                decisions += int(rec["decisions"])
                correct += int(rec["correct"])
                done[k] = bool(rec["done"])
            step += 1
        return {"steps": step, "interactions": decisions,
                "decision_accuracy": correct / decisions if decisions else float("nan"),
                "item_update_bytes": self.bytes["item_text_up"]}

    def build_groups(self, nodes: Sequence) -> Groups | None:
        """Collect tags once and build the groups and their memories (no-op without groups)."""
        if self.n_groups == 0:
            return None
        tags: dict[tuple[int, int], list[str]] = {}
        recent: dict[tuple[int, int], list[tuple[int, float]]] = {}
        replies = self._exchange(nodes, "tags",
                                 {k: message(request="tags") for k in range(len(nodes))})
        for k in sorted(replies):
            rec = replies[k][RECORD]
            for p, tag in zip(rec["tag_user"], rec["tags"], strict=True):
                tags.setdefault((k, int(p)), []).append(str(tag))
            for p, item, t in zip(rec["recent_user"], rec["recent_item"], rec["recent_time"],
                                  strict=True):
                recent.setdefault((k, int(p)), []).append((int(item), float(t)))
        keys = sorted(set(tags) | set(recent))
        index = {key: j for j, key in enumerate(keys)}
        groups = build_groups({index[key]: ts for key, ts in tags.items()}, self.encoder,
                              self.kmeans_k, self.n_groups, self.seed)
        self.group_texts = group_memories(groups, {index[k]: r for k, r in recent.items()},
                                          self.item_domain, self.item_title)
        self.members = [[keys[j] for j in sorted(m)] for m in groups.members]
        self.groups = groups
        return groups

    def evaluate(self, nodes: Sequence) -> dict[str, float]:
        """Pooled MRR and NDCG@K over every node's test rows."""
        sums: dict[str, float] = {}
        msgs = {}
        for k in range(len(nodes)):
            values: dict[str, Any] = {"request": "evaluate"}
            if self.groups is not None:
                ids, domains, texts = [], [], []
                for g, per in enumerate(self.group_texts):
                    for d, t in sorted(per.items()):
                        ids.append(g)
                        domains.append(d)
                        texts.append(t)
                mine = [(g, p) for g, m in enumerate(self.members) for n, p in m if n == k]
                values |= {"n_groups": len(self.group_texts), "group_ids": ids,
                           "group_domains": domains, "group_texts": texts,
                           "member_groups": [g for g, _ in mine],
                           "member_users": [p for _, p in mine]}
            msgs[k] = message(**values)
        for reply in self._exchange(nodes, "evaluate", msgs).values():
            for key, value in reply[RECORD].items():
                if not key.startswith("llm/"):
                    sums[key] = sums.get(key, 0.0) + float(value)
        n = sums.get("n", 0.0)
        out = {"mrr": sums.get("mrr_sum", 0.0) / n if n else float("nan")}
        for k in K_LIST:
            out[f"ndcg@{k}"] = sums.get(f"ndcg@{k}_sum", 0.0) / n if n else float("nan")
        out["n"] = int(n)
        return out
