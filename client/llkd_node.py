"""An LLKD node: its users' unlabeled item titles, the teacher and LLKD selection run here.

A node's unlabeled data are the titles of the items in its users' training histories (the
items of the task's training pool among them). On the node: the MiniLM embeddings, the teacher
(an in-process LLM or the node operator's server; ``scripted`` for controls) and the student's
local epochs with LLKD selection from the global head and thresholds. Only numbers leave it:

* ``train``: the head's weights (``C x d + C``), the two threshold states ``[mu, m(0..C-1)]``
  and counts (``num-positions`` = pool size, selected counts, LLM calls);
* ``evaluate``: ``hr@K`` / ``ndcg@K`` sums of the true class's rank among the ``C`` ranked
  classes (``hr@1`` = accuracy) and per-class TP/FP/FN counts of the global head on
  this node's share of the public held-out items (item ``i`` goes to partition
  ``i mod num-partitions``, so the pooled sums cover every held-out item once); ``valid`` is
  the dev half of the held-out items (round selection), ``test`` the other half.

Which items a node's users interacted with never leaves it; nor does any text. The node reads
the public item text its shard serves, not the split.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from florec.client.node_store import open_store
from florec.client.trainers.bucket import Bucket
from florec.models.llkd.student import LinearStudent
from florec.models.llkd.task import TextTask, build_task, parse_item_line, split_task
from florec.models.llkd.teacher import make_teacher, teacher_distribution
from florec.models.llkd.train import HEAD, LLKDTrainer, load_state, state_arrays
from florec.protocol.codec import from_record, to_record
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.shard import shard_of_node

EVER_KEY = "llkd-ever"


_TASKS: dict[str, tuple[TextTask, np.ndarray, np.ndarray]] = {}


def node_task(cfg: RunConfig, context: Context) -> tuple[TextTask, np.ndarray, np.ndarray]:
    """The task from the shard's public item text, its pool and held-out items (once/process).

    The node reads the item catalogue its shard serves (:mod:`florec.recdata.shard`), never the
    whole split.
    """
    key = json.dumps(cfg.to_flower(), sort_keys=True)
    if key not in _TASKS:
        lines = shard_of_node(cfg, context.node_config).item_texts()
        task = build_task(cfg.dataset, [parse_item_line(line) for line in lines],
                          cfg.llkd_classes)
        if len(task.classes) != cfg.llkd_classes:
            raise ConfigError(f"the dataset has {len(task.classes)} categories, fewer than "
                              f"llkd-classes={cfg.llkd_classes}; lower llkd-classes")
        _TASKS[key] = (task, *split_task(task, cfg.llkd_test_fraction, cfg.split_seed))
    return _TASKS[key]


@functools.lru_cache(maxsize=2)
def _encoder(name: str) -> Any:
    from florec.models.llm.encoder import SentenceEncoder

    return SentenceEncoder(name, progress=False)


def node_pool(cfg: RunConfig, context: Context, bucket: Bucket) -> np.ndarray:
    """Items of the task's training pool that this node's users have in their histories."""
    _, pool, _ = node_task(cfg, context)
    seen = np.flatnonzero(np.diff(bucket.train.tocsc().indptr) > 0)
    return np.intersect1d(pool, seen)


_EMBEDDINGS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _embed(cfg: RunConfig, context: Context, items: np.ndarray) -> np.ndarray:
    """MiniLM rows of ``items`` (every labelled title embedded once per process).

    The vectors are cached on disk by text: the same entry as the central run's.
    """
    from florec.models.cotrec.pipeline import encode_cached

    key = json.dumps(cfg.to_flower(), sort_keys=True)
    if key not in _EMBEDDINGS:
        task, _, _ = node_task(cfg, context)
        labelled = task.labelled
        _EMBEDDINGS[key] = (labelled, encode_cached(_encoder(cfg.encoder),
                                                    [task.inputs[i] for i in labelled]))
    labelled, emb = _EMBEDDINGS[key]
    return emb[np.searchsorted(labelled, items)].astype(np.float32)


def _teacher(cfg: RunConfig, context: Context, items: np.ndarray) -> tuple[np.ndarray, dict]:
    """``p_T`` of the node's items, kept in the node's store (one teacher pass per node)."""
    store = open_store(context, cfg.store_spill_mb)
    saved = store.get("llkd-teacher")
    if saved is not None and np.array_equal(saved["items"], items):
        return saved["probs"], {}
    task, _, _ = node_task(cfg, context)
    llm = make_teacher(cfg, task, items)
    probs = teacher_distribution(llm, [task.inputs[i] for i in items], task.classes, task.noun)
    store.put("llkd-teacher", {"items": items, "probs": probs})
    store.commit()
    return probs, {f"llm/{k}": v for k, v in llm.stats.as_dict().items()}


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Local LLKD epochs over the node's pool from the global head and thresholds."""
    t0 = time.perf_counter()
    rnd = int(msg.content.config_records["config"]["server-round"])
    arrays = from_record(msg.content.array_records["arrays"])
    items = node_pool(cfg, context, bucket)
    metrics: dict[str, float] = {"partition-id": pid, "num-users": len(bucket.users),
                                 "num-positions": len(items)}
    if len(items) == 0:
        return RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(
            metrics | {"loss-sum": 0.0})})
    probs, llm_stats = _teacher(cfg, context, items)
    trainer = LLKDTrainer(_embed(cfg, context, items), probs, cfg.llkd_selection, lr=cfg.llkd_lr,
                          momentum=cfg.llkd_ema, budget=cfg.llkd_budget,
                          seed=torch_seed(cfg.seed, Salt.LLKD_TRAIN, rnd, pid))
    load_state(trainer, arrays)
    store = open_store(context, cfg.store_spill_mb)
    ever = store.get(EVER_KEY)
    if ever is not None and len(ever["ever"]) == len(items):
        trainer.log.ever[:] = ever["ever"]
    log = trainer.fit(cfg.local_epochs, cfg.llkd_batch_size)
    store.put(EVER_KEY, {"ever": log.ever.copy()})
    store.commit()
    metrics |= {"loss-sum": float(np.mean(log.losses)) * len(items),
                "selected": float(sum(sum(e) for e in log.per_epoch)),
                "selected-ever": float(log.ever.sum()), "seconds": time.perf_counter() - t0}
    return RecordDict({"arrays": to_record(state_arrays(trainer)),
                       "metrics": MetricRecord(metrics | llm_stats)})


def held_out_share(held_out: np.ndarray, split_seed: int, pid: int, num_partitions: int
                   ) -> dict[str, np.ndarray]:
    """The node's dev (``valid``) and ``test`` items: ``i mod num_partitions == pid``.

    The dev half is a seeded half of ``held_out`` (the same on every node and centrally).
    """
    rng = stream(split_seed, Salt.LLKD_HELD_OUT)
    dev = np.zeros(len(held_out), bool)
    dev[rng.permutation(len(held_out))[: len(held_out) // 2]] = True
    mine = held_out % max(num_partitions, 1) == pid
    return {"valid": held_out[dev & mine], "test": held_out[~dev & mine]}


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Sums of the global head on the node's share of the held-out items (module docstring)."""
    task, _, held_out = node_task(cfg, context)
    arrays = from_record(msg.content.array_records["arrays"])
    n_classes = len(task.classes)
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_nodes))
    sums: dict[str, float] = {"partition-id": pid}
    dim = _encoder(cfg.encoder).dim
    student = LinearStudent(dim, n_classes)
    student.load({k: arrays[k] for k in HEAD})
    for part, items in held_out_share(held_out, cfg.split_seed, pid, num_partitions).items():
        emb = _embed(cfg, context, items)
        gold = task.gold[items]
        proba = student.proba(emb) if len(items) else np.zeros((0, n_classes))
        pred = proba.argmax(1) if len(items) else np.zeros(0, np.int64)
        rank = (proba > proba[np.arange(len(items)), gold][:, None]).sum(1) + 1
        sums[f"{part}/num-users"] = float(len(items))
        for k in cfg.k_list:  # the true class's rank among the C classes: hr@1 = accuracy
            sums[f"{part}/hr@{k}"] = float((rank <= k).sum())
            sums[f"{part}/ndcg@{k}"] = float(((rank <= k) / np.log2(rank + 1)).sum())
        for c in range(n_classes):
            sums[f"llkd/{part}-tp-{c}"] = float(((pred == c) & (gold == c)).sum())
            sums[f"llkd/{part}-fp-{c}"] = float(((pred == c) & (gold != c)).sum())
            sums[f"llkd/{part}-fn-{c}"] = float(((pred != c) & (gold == c)).sum())
    return RecordDict({"metrics": MetricRecord(sums)})
