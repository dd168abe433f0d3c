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

Which items a node's users interacted with never leaves it; nor does any text.
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
from florec.models.llkd.task import TextTask, load_task, split_task
from florec.models.llkd.teacher import make_teacher, teacher_distribution
from florec.models.llkd.train import HEAD, LLKDTrainer, load_state, state_arrays
from florec.protocol.codec import from_record, to_record
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, torch_seed

EVER_KEY = "llkd-ever"


@functools.lru_cache(maxsize=2)
def _task(config_json: str) -> tuple[TextTask, np.ndarray, np.ndarray]:
    cfg = RunConfig.model_validate(json.loads(config_json))
    task = load_task(cfg)
    if len(task.classes) != cfg.llkd_classes:
        raise ConfigError(f"the dataset has {len(task.classes)} categories, fewer than "
                          f"llkd-classes={cfg.llkd_classes}; lower llkd-classes")
    pool, held_out = split_task(task, cfg.llkd_test_fraction, cfg.split_seed)
    return task, pool, held_out


@functools.lru_cache(maxsize=2)
def _encoder(name: str) -> Any:
    from florec.models.llm.encoder import SentenceEncoder

    return SentenceEncoder(name, progress=False)


def node_pool(cfg: RunConfig, bucket: Bucket) -> np.ndarray:
    """Items of the task's training pool that this node's users have in their histories."""
    _, pool, _ = _task(json.dumps(cfg.to_flower(), sort_keys=True))
    seen = np.flatnonzero(np.diff(bucket.train.tocsc().indptr) > 0)
    return np.intersect1d(pool, seen)


@functools.lru_cache(maxsize=2)
def _labelled_embeddings(config_json: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every labelled item's public title (computed once per process)."""
    from florec.models.cotrec.pipeline import encode_cached

    cfg = RunConfig.model_validate(json.loads(config_json))
    task, _, _ = _task(config_json)
    items = task.labelled
    return items, encode_cached(_encoder(cfg.encoder), [task.inputs[i] for i in items])


def _embed(cfg: RunConfig, items: np.ndarray) -> np.ndarray:
    """Rows of :func:`_labelled_embeddings` for ``items`` (all labelled)."""
    labelled, emb = _labelled_embeddings(json.dumps(cfg.to_flower(), sort_keys=True))
    return emb[np.searchsorted(labelled, items)].astype(np.float32)


def _teacher(cfg: RunConfig, context: Context, items: np.ndarray) -> tuple[np.ndarray, dict]:
    """``p_T`` of the node's items, kept in the node's store (one teacher pass per node)."""
    store = open_store(context, cfg.store_spill_mb)
    saved = store.get("llkd-teacher")
    if saved is not None and np.array_equal(saved["items"], items):
        return saved["probs"], {}
    task, _, _ = _task(json.dumps(cfg.to_flower(), sort_keys=True))
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
    items = node_pool(cfg, bucket)
    metrics: dict[str, float] = {"partition-id": pid, "num-users": len(bucket.users),
                                 "num-positions": len(items)}
    if len(items) == 0:
        return RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(
            metrics | {"loss-sum": 0.0})})
    probs, llm_stats = _teacher(cfg, context, items)
    trainer = LLKDTrainer(_embed(cfg, items), probs, cfg.llkd_selection, lr=cfg.llkd_lr,
                          momentum=cfg.llkd_ema, budget=cfg.llkd_budget,
                          seed=torch_seed(cfg.seed, Salt.SEQ_ROUND, rnd, pid))
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


def held_out_share(cfg: RunConfig, pid: int, num_partitions: int) -> dict[str, np.ndarray]:
    """The node's dev (``valid``) and ``test`` items: ``i mod num_partitions == pid``."""
    _, _, held_out = _task(json.dumps(cfg.to_flower(), sort_keys=True))
    rng = np.random.default_rng([cfg.split_seed, 31])
    dev = np.zeros(len(held_out), bool)
    dev[rng.permutation(len(held_out))[: len(held_out) // 2]] = True
    mine = held_out % max(num_partitions, 1) == pid
    return {"valid": held_out[dev & mine], "test": held_out[~dev & mine]}


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Sums of the global head on the node's share of the held-out items (module docstring)."""
    task, _, _ = _task(json.dumps(cfg.to_flower(), sort_keys=True))
    arrays = from_record(msg.content.array_records["arrays"])
    n_classes = len(task.classes)
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_nodes))
    sums: dict[str, float] = {"partition-id": pid}
    dim = _encoder(cfg.encoder).dim
    student = LinearStudent(dim, n_classes)
    student.load({k: arrays[k] for k in HEAD})
    for part, items in held_out_share(cfg, pid, num_partitions).items():
        emb = _embed(cfg, items)
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
