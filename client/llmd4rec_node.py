"""A LLMD4Rec node: SASRec (the CRM) under FedAvg, and the LLM teacher on the node's own users.

Everything that reads a user's history runs here (docs/methods/llmd4rec.md, protocol card): the
CRM's candidates of the node's training samples, the prompts (history titles + candidates),
the LLM that answers them, its LoRA step and the cached teacher distributions. Only these leave
the node: the CRM's shared arrays and its number of training positions (as
:mod:`florec.client.seq_node`), the LoRA adapter and its number of samples, and counts / metric
sums. The teacher table (candidates, K probabilities per sample) stays in the node's store.

Message kinds (``config['llmd4rec-phase']``):

* ``train`` ``lora``: candidates from the global CRM, LoRA on CE + KL toward the CRM from the
  global adapter over the covered samples; replies with the adapter and ``num-samples``;
* ``train`` ``score``: one pass of the teacher (global adapter) over the covered samples; the
  table goes to the store, the reply holds counts only;
* ``train`` ``crm`` (default): local SASRec epochs, on CE + weighted KL toward the stored table
  once ``llmd4rec-distill`` is set;
* ``evaluate`` (default): full-ranking metric sums; ``evaluate`` ``rerank``: the node's test
  users' CRM top-K re-ranked by the teacher, as sums.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from florec.client.node_store import open_store
from florec.client.seq_node import global_model, node_sequences
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.sequential import (
    load_optimizer_arrays,
    optimizer_arrays,
    sequence_metric_sums,
)
from florec.models.llmd4rec.candidates import evaluation_set, training_set
from florec.models.llmd4rec.crm_step import TeacherTable, distill_epoch, rerank_metrics
from florec.models.llmd4rec.llm_step import ensure_adapter, lora_init_seed
from florec.models.llmd4rec.teachers import LLMTeacher, build_llm_teacher
from florec.protocol.codec import from_record, to_record
from florec.protocol.item_counts import COUNTS_RECORD, counts_record
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.shard import shard_of_node

OPT_KEY = "llmd4rec-optimizer"
TABLE_KEY = "llmd4rec-teacher"
_NODE_KEYS = ("partition-id", "num-partitions", "data-dir")


def _crm_cfg(cfg: RunConfig) -> RunConfig:
    return cfg.model_copy(update={"model": "sasrec", "oracle": False})


_TEACHERS: dict[str, LLMTeacher] = {}


def node_teacher(cfg: RunConfig, context: Context, adapter: dict[str, np.ndarray] | None
                 ) -> LLMTeacher:
    """The node's LLM teacher (one per process) with the global adapter loaded.

    An empty ``adapter`` means the common start: LoRA ``A`` drawn from the run's init seed
    (:func:`~florec.models.llmd4rec.llm_step.lora_init_seed`), ``B = 0`` (the same on every node and
    centrally, so the server averages adapters of one initialisation). Backends
    without weights (``scripted``, ``openai``) take no adapter. A simulation process serves
    several partitions with one LLM: each message loads the adapter it carries.
    """
    key = json.dumps(cfg.to_flower(), sort_keys=True)
    if key not in _TEACHERS:
        _TEACHERS.clear()
        node = {k: context.node_config[k] for k in _NODE_KEYS if k in context.node_config}
        texts = shard_of_node(cfg, node).item_texts()  # public, the same in every shard
        _TEACHERS[key] = build_llm_teacher(cfg, texts)
    teacher = _TEACHERS[key]
    try:
        ensure_adapter(teacher.llm, cfg.llmd4rec_lora_r, cfg.llmd4rec_lora_alpha,
                       lora_init_seed(cfg.seed))
    except NotImplementedError:
        return teacher
    if not hasattr(teacher, "initial_adapter"):
        teacher.initial_adapter = teacher.llm.adapter_state()
    teacher.llm.load_adapter_state(adapter or teacher.initial_adapter)
    return teacher


def _stats(teacher: LLMTeacher) -> dict[str, float]:
    return dict(teacher.llm.stats.as_dict())


def _adapter(msg: Message) -> dict[str, np.ndarray]:
    record = msg.content.array_records.get("adapter")
    return from_record(record) if record is not None and len(record) else {}


def _samples(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, device: str):
    seqs = node_sequences(context, cfg)
    windows = seqs.inputs(bucket.users, "train", cfg.max_seq_len)
    model = global_model(msg, _crm_cfg(cfg), bucket.n_items, device)
    ds = training_set(model, windows, bucket.users, cfg.llmd4rec_candidates,
                      cfg.llmd4rec_positions, cfg.eval_chunk, device)
    return windows, ds


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """CRM epochs (phase ``crm``), the LLM's LoRA (``lora``) or the teacher pass (``score``)."""
    config = msg.content.config_records["config"]
    phase = str(config.get("llmd4rec-phase", "crm"))
    if phase in ("lora", "score"):
        return teacher_phase(msg, context, cfg, bucket, pid, device, phase)
    t0 = time.perf_counter()
    rnd = int(config["server-round"])
    seqs = node_sequences(context, cfg)
    windows = seqs.inputs(bucket.users, "train", cfg.max_seq_len)
    model = global_model(msg, _crm_cfg(cfg), bucket.n_items, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.llmd4rec_crm_lr)
    store = open_store(context, cfg.store_spill_mb)
    saved = store.get(OPT_KEY)
    if saved is not None:
        load_optimizer_arrays([optimizer], saved)
    table = None
    if int(config.get("llmd4rec-distill", 0)) and (stored := store.get(TABLE_KEY)) is not None:
        table = TeacherTable(stored["index"], stored["candidates"], stored["probs"],
                             stored["target_slot"])
    rng = stream(cfg.seed, Salt.SEQ_ROUND, rnd, pid)
    torch.manual_seed(torch_seed(cfg.seed, Salt.SEQ_DROPOUT, rnd, pid))  # dropout
    positions, loss_sum, kd = 0, 0.0, 0
    for _ in range(cfg.local_epochs):
        stats = distill_epoch(model, optimizer, windows, rng, cfg.llmd4rec_crm_batch_size,
                              table, cfg.llmd4rec_lambda_crm, cfg.llmd4rec_temperature,
                              cfg.llmd4rec_weighting, device)
        positions, loss_sum, kd = stats.positions, loss_sum + stats.loss_sum, stats.kd_samples
    if positions:
        store.put(OPT_KEY, optimizer_arrays([optimizer]))
        store.commit()
    metrics = MetricRecord({
        "partition-id": pid, "num-users": int((seqs.train_lengths(bucket.users) > 0).sum()),
        "num-positions": positions, "num-examples": positions, "kd-samples": kd,
        "loss-sum": loss_sum / max(cfg.local_epochs, 1), "seconds": time.perf_counter() - t0})
    reply = RecordDict({"arrays": to_record(model.shared_state()), "metrics": metrics})
    if cfg.aggregation == "item-weighted":  # the server averages each item row by these
        reply[COUNTS_RECORD] = counts_record(windows, bucket.n_items)
    return reply


def teacher_phase(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
                  device: str, phase: str) -> RecordDict:
    """``lora``: LoRA from the global adapter, uploads it; ``score``: caches the teacher table."""
    t0 = time.perf_counter()
    it = int(msg.content.config_records["config"]["iteration"])
    adapter = _adapter(msg)
    teacher = node_teacher(cfg, context, adapter)
    before = _stats(teacher)
    windows, ds = _samples(msg, context, cfg, bucket, device)
    metrics: dict[str, float] = {"partition-id": pid, "samples": len(ds),
                                 "covered": int(ds.covered.sum())}
    out = RecordDict()
    if phase == "lora":
        fit = teacher.fit(ds, it, pid) if ds.covered.any() else {"skipped": "no covered sample"}
        trained = "skipped" not in fit
        metrics["num-samples"] = int(ds.covered.sum()) if trained else 0
        if trained:
            metrics["loss-sum"] = float(fit["loss_last_epoch"]) * metrics["num-samples"]
        # untrained: the adapter it started from (the global one, or the seeded initial one
        # when the server's is still empty), never {}; its weight 0 keeps it out of the mean
        out["adapter"] = to_record(teacher.llm.adapter_state())
    else:
        probs = teacher.probs(ds)
        table = TeacherTable.of(ds, probs, windows.shape)
        store = open_store(context, cfg.store_spill_mb)
        store.put(TABLE_KEY, {"index": table.index, "candidates": table.candidates,
                              "probs": table.probs, "target_slot": table.target_slot})
        store.commit()
        cov = ds.covered
        metrics["teacher-top1"] = int((probs[cov].argmax(1) == ds.target_slot[cov]).sum())
    metrics |= {f"llm/{k}": v - before[k] for k, v in _stats(teacher).items()}
    out["metrics"] = MetricRecord(metrics | {"seconds": time.perf_counter() - t0})
    return out


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """LLMD4Rec has no align phase."""
    raise RuntimeError("llmd4rec nodes receive no align messages")


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Full-ranking metric sums of the node's users, or (phase ``rerank``) re-ranking sums."""
    config = msg.content.config_records["config"]
    seqs = node_sequences(context, cfg)
    model = global_model(msg, _crm_cfg(cfg), bucket.n_items, device)
    if str(config.get("llmd4rec-phase", "")) == "rerank":
        return rerank(msg, context, cfg, bucket, pid, device, model, seqs)
    inputs = {p: seqs.inputs(bucket.users, p, cfg.max_seq_len) for p in ("valid", "test")}
    masks = {p: bucket.mask_for(p) for p in ("valid", "test")}
    sums = sequence_metric_sums(model, inputs, masks, {"valid": bucket.valid,
                                                       "test": bucket.test},
                                cfg.k_list, cfg.eval_chunk, device)
    return RecordDict({"metrics": MetricRecord(sums | {"partition-id": pid})})


def rerank(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
           device: str, model: Any, seqs: Any) -> RecordDict:
    """Sums over the node's test users of the CRM top-K's and the re-ranked NDCG/HR."""
    from florec.models.cotrec.rank_eval import single_targets

    teacher = node_teacher(cfg, context, _adapter(msg))
    before = _stats(teacher)
    local = np.arange(len(bucket.users))
    ds = evaluation_set(model, seqs.inputs(bucket.users, "test", cfg.max_seq_len), bucket.users,
                        single_targets(bucket.test, local), bucket.mask_for("test"),
                        cfg.llmd4rec_candidates, cfg.eval_chunk, device)
    out = rerank_metrics(ds, teacher.probs(ds), cfg.llmd4rec_candidates)
    n = out.pop("users")
    sums = {k: v * n for k, v in out.items() if not k.startswith("covered/")}
    sums |= {"num-users": n, "partition-id": pid}
    sums |= {f"llm/{k}": v - before[k] for k, v in _stats(teacher).items()}
    return RecordDict({"metrics": MetricRecord(sums)})
