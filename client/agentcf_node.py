"""An AgentCF(++) node: its users' agent memories stay here; item texts and tags travel.

A node hosts a bucket of users. Their memories (AgentCF's one memory, or AgentCF++'s M_u^d and
F_u^d, with the long-term log) live in the node's store and never enter a message. Every prompt
that shows a user memory (decision, reflections, fusion, item reflection, tags, ranking) is
built and answered here, by the node's LLM (docs/methods/llm.md, placement rule).

Messages (Flower ``RecordDict`` with one ``ConfigRecord`` ``"agentcf"``):

* ``train`` down: ``step`` and the item descriptions changed since the last step
  (``items``, ``texts``); up: the new learned descriptions of the step's positive and negative
  items (``items``, ``texts``: text that describes a user's taste), ``decisions``,
  ``correct``, ``done``;
* ``tags`` up (once): per user, under a node-local pseudonym, its interest tags and its last
  training items per domain with their times (``tag_user``, ``tags``, ``recent_user``,
  ``recent_item``, ``recent_time``);
* ``evaluate`` down: the group memories and each pseudonym's groups; up: sums of ``1/r`` and
  NDCG@K over the node's test rows and their count;
* ``partition`` up: the node's partition, its number of users and the population (sizes only);
  ``catalogue`` up: the public item text, titles and domains (asked from one node).

Every reply also carries the LLM counters of that message (``llm/llm_calls``,
``llm/llm_cache_hits``, tokens, seconds). Under ``flwr run`` (:func:`flower_reply`) the node
object is rebuilt for each message from the public protocol and the node store
(:mod:`florec.client.node_store`, in the Flower ``Context``): the memories and the node's
replica of the item descriptions are read from it before and written back after.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from florec.models.agentcf.agents import AgentSettings, training_steps, user_side_step
from florec.models.agentcf.data import DomainData
from florec.models.agentcf.groups import Groups, tag_users
from florec.models.agentcf.memory import ItemMemories, UserMemory
from florec.models.agentcf.pipeline import (
    group_text_fn,
    load_domain_data,
    make_agent_llm,
    rank_settings_of,
    settings_of,
    step_batch,
)
from florec.models.agentcf.rank import K_LIST, RankSettings, rank_metrics, rank_rows
from florec.protocol.agentcf_messages import RECORD, kind_of, message
from florec.recdata.runconfig import RunConfig

RECENT_PER_DOMAIN = 3
#: the node-store group that holds the memories and the item replica
STORE_KEY = "agentcf-node"


class AgentCFNode:
    """One node of a federated AgentCF(++) run.

    Parameters
    ----------
    users : sequence of int
        The bucket's users.
    data : DomainData
        The protocol; the node reads only its users' interactions and the public item text.
    llm : LLM
        The node's LLM.
    settings, rank : AgentSettings, RankSettings
        As in the central run.
    cap : int
        ``agentcf-train-max``.

    """

    def __init__(self, users, data: DomainData, llm, settings: AgentSettings,
                 rank: RankSettings, cap: int = 0) -> None:
        self.users = [int(u) for u in users]
        self.data, self.llm, self.settings, self.rank = data, llm, settings, rank
        #: the node store: private memories, by user (never sent)
        self.store: dict[int, dict] = {u: UserMemory(settings.dual).to_dict() for u in self.users}
        self.items = ItemMemories(data.item_text)  # replica of the server's public item agents
        self.steps = training_steps(data.train, self.users, cap)
        self.pseudonym = {u: k for k, u in enumerate(self.users)}

    def memories(self) -> dict[int, UserMemory]:
        """The users' memories, read from the store."""
        return {u: UserMemory.from_dict(d) for u, d in self.store.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The node's state as arrays for the node store (memories, item replica)."""
        learned = sorted(self.items.learned.items())
        return {"memories": np.asarray([json.dumps(self.store, ensure_ascii=False)]),
                "item_ids": np.asarray([i for i, _ in learned], np.int64),
                "item_texts": np.asarray([t for _, t in learned] or [""])[:len(learned)]}

    def load_arrays(self, arrays: dict[str, np.ndarray] | None) -> None:
        """Restore :meth:`to_arrays` (``None``: a fresh node keeps its empty state)."""
        if arrays is None:
            return
        self.store = {int(u): d for u, d in json.loads(str(arrays["memories"][0])).items()}
        self.items = ItemMemories(self.data.item_text)
        for item, text in zip(arrays["item_ids"], arrays["item_texts"], strict=True):
            self.items.update(int(item), str(text))

    def handle(self, kind: str, msg: RecordDict) -> RecordDict:
        """Answer one server message; the reply adds the LLM counters it spent.

        ``kind`` is ``train``, ``tags``, ``evaluate``, ``partition`` or ``catalogue``; the
        counters travel as ``llm/<counter>``.
        """
        rec = msg[RECORD]
        before = self.llm.stats.as_dict()
        if kind == "train":
            reply = self._train(rec)
        elif kind == "tags":
            reply = self._tags()
        elif kind == "evaluate":
            reply = self._evaluate(rec)
        elif kind == "partition":
            reply = message(users=len(self.users), population=len(self.data.users))
        elif kind == "catalogue":
            reply = message(item_text=list(self.data.item_text),
                            item_title=list(self.data.item_title),
                            item_domain=[int(d) for d in self.data.item_domain],
                            domains=list(self.data.domains),
                            meta=json.dumps(self.data.meta, default=str))
        else:
            raise ValueError(f"unknown AgentCF message kind {kind!r}; use train, tags, "
                             "evaluate, partition or catalogue")
        for key, value in self.llm.stats.as_dict().items():
            reply[RECORD][f"llm/{key}"] = float(value - before[key])
        return reply

    def _train(self, rec: ConfigRecord) -> RecordDict:
        for item, text in zip(rec["items"], rec["texts"], strict=True):
            self.items.update(int(item), str(text))
        step = int(rec["step"])
        if step >= len(self.steps):
            return message(items=[], texts=[], decisions=0, correct=0, done=True)
        memories = self.memories()
        batch = step_batch(self.data, self.steps[step], step, self.settings.seed)
        updates, correct = user_side_step(self.llm, memories, batch, self.items.__getitem__,
                                          self.data.item_title, self.data.domains,
                                          self.settings, step)
        self.store.update({u: memories[u].to_dict() for u in self.users})
        return message(items=[i for i, _ in updates], texts=[t for _, t in updates],
                       decisions=len(batch), correct=correct, done=step + 1 >= len(self.steps))

    def _tags(self) -> RecordDict:
        tags = tag_users(self.llm, self.memories(), self.data.domains,
                         temperature=self.settings.temperature, seed=self.settings.seed)
        tag_user, tag_text, r_user, r_item, r_time = [], [], [], [], []
        for u in self.users:
            tag_user += [self.pseudonym[u]] * len(tags[u])
            tag_text += tags[u]
            rows = self.data.train.get(u, [])
            for d in sorted({int(self.data.item_domain[i]) for i, _ in rows}):
                mine = [(t, i) for i, t in rows if int(self.data.item_domain[i]) == d]
                for t, item in sorted(mine)[-RECENT_PER_DOMAIN:]:
                    r_user.append(self.pseudonym[u])
                    r_item.append(int(item))
                    r_time.append(float(t))
        return message(tag_user=tag_user, tags=tag_text, recent_user=r_user,
                       recent_item=r_item, recent_time=r_time)

    def _evaluate(self, rec: ConfigRecord) -> RecordDict:
        group_text = None
        if "group_domains" in rec:
            n_groups = int(rec["n_groups"])
            texts: list[dict[int, str]] = [{} for _ in range(n_groups)]
            for g, d, t in zip(rec["group_ids"], rec["group_domains"], rec["group_texts"],
                               strict=True):
                texts[int(g)][int(d)] = str(t)
            members: list[set[int]] = [set() for _ in range(n_groups)]
            for g, p in zip(rec["member_groups"], rec["member_users"], strict=True):
                members[int(g)].add(self.users[int(p)])
            group_text = group_text_fn(Groups(members, [""] * n_groups, {}), texts)
        rows = [r for r, (u, _) in enumerate(self.data.test) if u in self.pseudonym]
        out = rank_rows(self.llm, rows, self.data.test, self.data.candidates, self.memories(),
                        self.items.__getitem__, self.data.item_title, self.data.item_domain,
                        self.data.domains, self.data.train, self.rank, group_text)
        r = np.asarray(out["ranks"], np.float64)
        sums = {"mrr_sum": float((1.0 / r).sum()) if r.size else 0.0, "n": int(r.size)}
        for k in K_LIST:
            sums[f"ndcg@{k}_sum"] = rank_metrics(out["ranks"])[f"ndcg@{k}"] * r.size \
                if r.size else 0.0
        return message(**sums)


@functools.lru_cache(maxsize=2)
def _protocol_and_llm(config_json: str) -> tuple[DomainData, Any]:
    """The public protocol and this process's LLM (built once per run config)."""
    cfg = RunConfig.model_validate(json.loads(config_json))
    return load_domain_data(cfg), make_agent_llm(cfg)


def node_of(cfg: RunConfig, context: Context) -> AgentCFNode:
    """The :class:`AgentCFNode` of a Flower node: bucket ``partition-id`` of the sampled users.

    The sampled users (sorted) are cut into ``num-partitions`` contiguous buckets, as
    :func:`florec.sim.central_agentcf.run_federated_agentcf` does; the state comes from the
    node store.
    """
    from florec.client.node_store import open_store

    data, llm = _protocol_and_llm(json.dumps(cfg.to_flower(), sort_keys=True))
    pid = int(context.node_config["partition-id"])
    nparts = int(context.node_config.get("num-partitions", cfg.num_nodes))
    users = np.array_split(data.users, nparts)[pid]
    node = AgentCFNode(users, data, llm, settings_of(cfg), rank_settings_of(cfg),
                       cfg.agentcf_train_max)
    node.load_arrays(open_store(context, cfg.store_spill_mb).get(STORE_KEY))
    return node


def flower_reply(msg: Message, context: Context, cfg: RunConfig) -> RecordDict:
    """Answer one AgentCF Flower message and keep the node's state in its store."""
    from florec.client.node_store import open_store

    node = node_of(cfg, context)
    kind = kind_of(msg.metadata.message_type, msg.content)
    reply = node.handle(kind, msg.content)
    if kind == "partition":
        reply[RECORD]["partition-id"] = int(context.node_config["partition-id"])
    if kind in ("train", "tags"):  # the only kinds that change the state
        store = open_store(context, cfg.store_spill_mb)
        store.put(STORE_KEY, node.to_arrays())
        store.commit()
    return reply
