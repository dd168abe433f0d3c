"""FedAvg on a node: every user of the bucket is a logical client with a private embedding."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from client.evaluation import bucket_metric_sums
from client.trainers.bpr_embedding import LocalConfig, local_update
from client.trainers.bucket import Bucket
from models.base import seeded_rows
from models.mf import MF, USER_SALT
from recdata.runconfig import RunConfig
from strategies.fedavg import node_payload
from strategies.payload import from_record, to_record

PRIVATE_KEY = "private"


def private_user_emb(context: Context, cfg: RunConfig, bucket: Bucket) -> np.ndarray:
    """The bucket users' private embeddings, initialised on first use from (seed, user id)."""
    if PRIVATE_KEY not in context.state.array_records:
        return seeded_rows(bucket.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
    return from_record(context.state.array_records[PRIVATE_KEY])["user_emb"]


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Local training of every user in the bucket; returns the node's summed item update."""
    t0 = time.perf_counter()
    glob = from_record(msg.content.array_records["arrays"])
    server_round = int(msg.content.config_records["config"]["server-round"])
    res = local_update(bucket, glob["item_emb"], glob["item_bias"],
                       private_user_emb(context, cfg, bucket), LocalConfig.from_run_config(cfg),
                       server_round, device, item_pop=glob.get("item_pop"))
    context.state[PRIVATE_KEY] = to_record({"user_emb": res.user_emb})
    deg = np.diff(bucket.train.indptr)
    weight = deg.astype(np.float64) if cfg.weighting == "interactions" else (deg > 0) * 1.0
    arrays, total_weight = node_payload(cfg.aggregation, bucket.n_items, res.row_user,
                                        res.row_item, res.delta, res.bias_delta, weight)
    metrics = MetricRecord({
        "partition-id": pid, "num-users": int((deg > 0).sum()), "num-pairs": res.num_pairs,
        "loss-sum": res.loss_sum, "weight": total_weight, "num-examples": int(deg.sum()),
        "seconds": time.perf_counter() - t0,
    })
    return RecordDict({"arrays": to_record(arrays), "metrics": metrics})


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """FedAvg has no second phase."""
    raise RuntimeError("fedavg nodes receive no align messages")


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Full-ranking metric sums of the bucket's users on validation and test."""
    glob = from_record(msg.content.array_records["arrays"])
    model = MF.from_arrays(private_user_emb(context, cfg, bucket), glob["item_emb"],
                           glob["item_bias"]).to(device)
    sums = bucket_metric_sums(model.score, bucket, cfg, pid, device)
    return RecordDict({"metrics": MetricRecord(sums)})
