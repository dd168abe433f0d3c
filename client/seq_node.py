"""FedAvg of sequential models on a node: the bucket's users' sequences train one local model.

The node receives every shared array of the global model (SASRec/GRU4Rec, or both Oracle4Rec
encoders and their shared embedding), trains ``local-epochs`` passes over the training
positions of its users' windows (:func:`florec.client.trainers.sequential.train_epoch`; Oracle4Rec
runs its two-phase step, so the future encoder is only ever used in training), and uploads the new
arrays with its number of training positions as the FedAvg weight. There are no private
parameters; the node keeps its Adam state(s) in its :mod:`florec.client.node_store` between rounds.
With ``aggregation='item-weighted'`` the reply also holds the count of each item in the node's
training windows (``item-counts``), the weights of the server's per-row item mean.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from florec.client.attacks import benign_rows, node_knowledge
from florec.client.node_store import open_store
from florec.client.seq_attacks import mix_states, poisoned_state, sequence_exposure_sums
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.sequential import (
    load_optimizer_arrays,
    make_optimizers,
    optimizer_arrays,
    sequence_metric_sums,
    train_epoch,
)
from florec.models.registry import sequential_from_config
from florec.models.seq_layers import SequentialRecommender
from florec.protocol.codec import from_record, to_record
from florec.protocol.item_counts import COUNTS_RECORD, counts_record
from florec.recdata.node_cache import node_cache
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.sequences import UserSequences
from florec.recdata.shard import node_key, shard_of_node

OPT_KEY = "seq-optimizer"


def node_sequences(context: Context, cfg: RunConfig) -> UserSequences:
    """The time-ordered sequences of this node's users, built from its shard.

    Kept in the process's byte-bounded :func:`florec.recdata.node_cache.node_cache` (a Ray
    actor serving many nodes keeps the recently served ones and rebuilds the others from their
    shards), under the node's :func:`florec.recdata.shard.node_key`.
    """
    key = node_key(cfg, context.node_config)
    return node_cache().get(("sequences", *key), lambda: UserSequences.from_split(
        shard_of_node(cfg, context.node_config).split))


def global_model(msg: Message, cfg: RunConfig, n_items: int, device: str
                 ) -> SequentialRecommender:
    """The model of ``cfg`` with the message's shared arrays loaded."""
    model = sequential_from_config(cfg, n_items)
    model.load_shared_state(from_record(msg.content.array_records["arrays"]))
    return model.to(device)


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Local epochs on the bucket's sequences; returns the new shared arrays and the weight."""
    t0 = time.perf_counter()
    rnd = int(msg.content.config_records["config"]["server-round"])
    seqs = node_sequences(context, cfg)
    know = node_knowledge(cfg, context)  # malicious users train apart (issue 18)
    benign = bucket.users[benign_rows(bucket, know)]
    windows = seqs.inputs(benign, "train", cfg.max_seq_len)
    model = global_model(msg, cfg, bucket.n_items, device)
    optimizers = make_optimizers(model, cfg.lr, cfg.weight_decay)
    store = open_store(context, cfg.store_spill_mb)
    saved = store.get(OPT_KEY)
    if saved is not None:
        load_optimizer_arrays(optimizers, saved)
    rng = stream(cfg.seed, Salt.SEQ_ROUND, rnd, pid)
    torch.manual_seed(torch_seed(cfg.seed, Salt.SEQ_DROPOUT, rnd, pid))  # dropout
    positions, loss_sum = 0, 0.0
    for _ in range(cfg.local_epochs):
        stats = train_epoch(model, optimizers, windows, bucket.n_items, rng,
                            cfg.local_batch_size, cfg.seq_loss, device)
        positions, loss_sum = stats.positions, loss_sum + stats.loss_sum
    if positions:
        store.put(OPT_KEY, optimizer_arrays(optimizers))
        store.commit()
    state, bad = model.shared_state(), np.setdiff1d(bucket.users, benign)
    if len(bad):  # the malicious users' poisoned model joins the node's mean (issue 18)
        poisoned, p_m = poisoned_state(cfg, know, global_model(msg, cfg, bucket.n_items, device),
                                       bad, seqs, bucket.n_items, rnd, pid, device)
        state, positions = mix_states(state, positions, poisoned, p_m), positions + p_m
    metrics = MetricRecord({
        "partition-id": pid, "num-users": int((seqs.train_lengths(bucket.users) > 0).sum()),
        "num-positions": positions, "num-examples": positions,
        "loss-sum": loss_sum / max(cfg.local_epochs, 1), "seconds": time.perf_counter() - t0,
    })
    reply = RecordDict({"arrays": to_record(state), "metrics": metrics})
    if cfg.aggregation == "item-weighted":  # the server averages each item row by these
        reply[COUNTS_RECORD] = counts_record(windows, bucket.n_items)
    return reply


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Sequential FedAvg has no second phase."""
    raise RuntimeError("sequential fedavg nodes receive no align messages")


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Full-ranking metric sums of the bucket's users (past encoder only for Oracle4Rec)."""
    seqs = node_sequences(context, cfg)
    model = global_model(msg, cfg, bucket.n_items, device)
    know = node_knowledge(cfg, context)  # benign users only; target exposure (issue 18)
    rows = benign_rows(bucket, know)
    users = bucket.users[rows]
    inputs = {part: seqs.inputs(users, part, cfg.max_seq_len) for part in ("valid", "test")}
    masks = {part: bucket.mask_for(part)[rows] for part in ("valid", "test")}
    truths = {"valid": bucket.valid[rows], "test": bucket.test[rows]}
    sums = sequence_metric_sums(model, inputs, masks, truths, cfg.k_list, cfg.eval_chunk, device)
    if know is not None and len(know.targets):
        sums |= sequence_exposure_sums(model, inputs["test"], masks["test"],
                                       (bucket.train + bucket.valid + bucket.test)[rows],
                                       know.targets, cfg.k_list, cfg.eval_chunk, device)
    return RecordDict({"metrics": MetricRecord(sums | {"partition-id": pid})})
