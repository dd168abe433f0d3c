"""The ClientApp: one node hosts one bucket of users, found from its ``partition-id``.

Every user of the bucket is a logical client (see :mod:`client.trainers.bpr_embedding`); the
users' private embeddings stay in the node's state and never enter a reply.
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.trainers.bpr_embedding import LocalConfig, local_update
from client.trainers.bucket import Bucket
from models.base import seeded_rows
from models.metrics import evaluate_users
from models.mf import MF, USER_SALT
from recdata.errors import ConfigError
from recdata.partition import partition_users
from recdata.runconfig import RunConfig, parse_run_config
from recdata.store import get_split
from strategies.fedavg import node_payload
from strategies.payload import from_record, to_record

app = ClientApp()
PRIVATE_KEY = "private"


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@functools.lru_cache(maxsize=4)
def _load_bucket(config_json: str, partition_id: int, num_partitions: int, data_dir: str
                 ) -> Bucket:
    cfg = RunConfig.model_validate(json.loads(config_json))
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, data_dir or cfg.data_dir,
                         cfg.min_rating, cfg.synthetic_params())
    buckets = partition_users(split.n_users, num_nodes=cfg.num_nodes,
                              users_per_node=cfg.users_per_node, mode=cfg.partition,
                              seed=cfg.split_seed)
    if num_partitions >= 0 and num_partitions != len(buckets):
        raise ConfigError(
            f"{num_partitions} nodes were started but the partition has {len(buckets)} buckets; "
            f"set --federation-config 'num-supernodes={len(buckets)}' or -c 'num-nodes="
            f"{num_partitions}'"
        )
    if not 0 <= partition_id < len(buckets):
        raise ConfigError(f"partition-id {partition_id} is outside 0..{len(buckets) - 1}; "
                          "check the node config of this SuperNode")
    return Bucket.from_split(split, buckets[partition_id])


def node_setup(context: Context) -> tuple[RunConfig, Bucket, int]:
    """Run config, this node's bucket and its partition id."""
    cfg = parse_run_config(context.run_config)
    pid = int(context.node_config["partition-id"])
    nparts = int(context.node_config.get("num-partitions", -1))
    data_dir = str(context.node_config.get("data-dir", ""))
    bucket = _load_bucket(json.dumps(cfg.to_flower(), sort_keys=True), pid, nparts, data_dir)
    return cfg, bucket, pid


def private_user_emb(context: Context, cfg: RunConfig, bucket: Bucket) -> np.ndarray:
    """The bucket users' private embeddings, initialised on first use from (seed, user id)."""
    if PRIVATE_KEY not in context.state.array_records:
        return seeded_rows(bucket.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
    return from_record(context.state.array_records[PRIVATE_KEY])["user_emb"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of every user in the bucket; returns the node's summed item update."""
    t0 = time.perf_counter()
    cfg, bucket, pid = node_setup(context)
    glob = from_record(msg.content.array_records["arrays"])
    server_round = int(msg.content.config_records["config"]["server-round"])
    local = LocalConfig(cfg.local_epochs, cfg.local_batch_size, cfg.optimizer, cfg.lr, cfg.reg,
                        cfg.seed)
    res = local_update(bucket, glob["item_emb"], glob["item_bias"],
                       private_user_emb(context, cfg, bucket), local, server_round,
                       resolve_device(cfg.device))
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
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Full-ranking metric sums of the bucket's users on validation and test."""
    cfg, bucket, pid = node_setup(context)
    glob = from_record(msg.content.array_records["arrays"])
    model = MF.from_arrays(private_user_emb(context, cfg, bucket), glob["item_emb"],
                           glob["item_bias"]).to(resolve_device(cfg.device))
    sums: dict[str, float] = {"partition-id": pid}
    users = np.arange(len(bucket.users))
    with torch.no_grad():
        for part in ("valid", "test"):
            part_sums = evaluate_users(model.score, users, bucket.mask_for(part),
                                       getattr(bucket, part), cfg.k_list, cfg.eval_chunk,
                                       resolve_device(cfg.device))
            sums.update({f"{part}/{k}": v for k, v in part_sums.items()})
    return Message(RecordDict({"metrics": MetricRecord(sums)}), reply_to=msg)

