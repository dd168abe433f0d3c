"""The ClientApp: one node hosts one bucket of users, found from its ``partition-id``.

Handlers dispatch on the run's algorithm: ``fedavg`` (:mod:`florec.client.fedavg_node`, every user a
logical client) or ``fedcia`` / ``local`` (:mod:`florec.client.private_node`, the bucket is one
client with a whole private model). Private parameters stay in the node's store
(:mod:`florec.client.node_store`) and never enter a reply. Two ``query`` messages serve the server:
``query.partition`` (which partition this node hosts) and ``query.store`` (snapshot or restore
the node's store at a checkpoint round, see :mod:`florec.server.checkpoint`).
"""

from __future__ import annotations

import functools
import json
from types import ModuleType

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from florec.client import fedavg_node, private_node
from florec.client.node_store import open_store, snapshot_path
from florec.client.trainers.bucket import Bucket
from florec.models.registry import SEQUENTIAL_MODELS
from florec.recdata.errors import ConfigError
from florec.recdata.partition import node_clients
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.splits import Split
from florec.recdata.store import get_split

app = ClientApp()
PRIVATE_KEY = fedavg_node.PRIVATE_KEY


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@functools.lru_cache(maxsize=2)
def _partition(config_json: str, data_dir: str) -> tuple[Split, list[list[np.ndarray]]]:
    """The split and every node's clients' users (once per process and run config)."""
    cfg = RunConfig.model_validate(json.loads(config_json))
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, data_dir or cfg.data_dir,
                         cfg.min_rating, cfg.synthetic_params())
    buckets = node_clients(split.n_users, num_nodes=cfg.num_nodes,
                           users_per_node=cfg.users_per_node,
                           clients_per_node=cfg.clients_per_node, mode=cfg.partition,
                           seed=cfg.split_seed)
    return split, buckets


@functools.lru_cache(maxsize=16384)  # a simulation process serves many partitions
def _load_bucket(config_json: str, partition_id: int, num_partitions: int, data_dir: str
                 ) -> Bucket:
    split, buckets = _partition(config_json, data_dir)
    if num_partitions >= 0 and num_partitions != len(buckets):
        raise ConfigError(
            f"{num_partitions} nodes were started but the partition has {len(buckets)} buckets; "
            f"set --federation-config 'num-supernodes={len(buckets)}' or -c 'num-nodes="
            f"{num_partitions}'"
        )
    if not 0 <= partition_id < len(buckets):
        raise ConfigError(f"partition-id {partition_id} is outside 0..{len(buckets) - 1}; "
                          "check the node config of this SuperNode")
    return Bucket.from_split(split, buckets[partition_id])  # a list of clients' users


def node_setup(context: Context) -> tuple[RunConfig, Bucket, int]:
    """Run config, this node's bucket and its partition id."""
    cfg = parse_run_config(context.run_config)
    pid = int(context.node_config["partition-id"])
    nparts = int(context.node_config.get("num-partitions", -1))
    data_dir = str(context.node_config.get("data-dir", ""))
    bucket = _load_bucket(json.dumps(cfg.to_flower(), sort_keys=True), pid, nparts, data_dir)
    return cfg, bucket, pid


def _node(cfg: RunConfig) -> ModuleType:
    if cfg.model == "cotrec":
        from florec.client import cotrec_node

        return cotrec_node
    if cfg.model in SEQUENTIAL_MODELS:
        from florec.client import seq_node

        return seq_node
    return fedavg_node if cfg.algorithm == "fedavg" else private_node


def _call(name: str, msg: Message, context: Context) -> Message:
    cfg, bucket, pid = node_setup(context)
    device = resolve_device(cfg.device)
    content = getattr(_node(cfg), name)(msg, context, cfg, bucket, pid, device)
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the bucket's users; the reply carries what the strategy aggregates."""
    return _call("train", msg, context)


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    """A strategy's setup stage before round 1 (e.g. secure sums of item popularity)."""
    from florec.client import setup_node

    cfg, bucket, pid = node_setup(context)
    node = _node(cfg) if cfg.model == "cotrec" else setup_node  # CoT-Rec: user perception
    content = node.setup(msg, context, cfg, bucket, pid, resolve_device(cfg.device))
    return Message(content, reply_to=msg)


@app.train("align")
def align(msg: Message, context: Context) -> Message:
    """FedCIA's second phase: align the private item table to the aggregated similarity."""
    return _call("align", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Full-ranking metric sums of the bucket's users on validation and test."""
    return _call("evaluate", msg, context)


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """Reply with the partition id and bucket size (the server maps node ids to buckets)."""
    _, bucket, pid = node_setup(context)
    return Message(RecordDict({"metrics": MetricRecord(
        {"partition-id": pid, "num-users": len(bucket.users)})}), reply_to=msg)


@app.query("store")
def store(msg: Message, context: Context) -> Message:
    """Snapshot (``action=snapshot``) or restore (``action=restore``) the node's store."""
    cfg, _, pid = node_setup(context)
    config = msg.content.config_records["config"]
    action, rnd = str(config["action"]), int(config["round"])
    path = snapshot_path(context, str(config["checkpoint-dir"]), rnd)
    node_store = open_store(context, cfg.store_spill_mb)
    if action == "snapshot":
        nbytes = node_store.snapshot(path)
        for old in sorted(path.parent.parent.glob(f"round-*/{path.name}"))[:-2]:
            old.unlink(missing_ok=True)  # a node keeps its two newest snapshots
    elif action == "restore":
        node_store.restore(path)
        nbytes = node_store.nbytes()
    else:
        raise ConfigError(f"store action '{action}' is unknown; use snapshot or restore")
    return Message(RecordDict({"metrics": MetricRecord(
        {"partition-id": pid, "bytes": nbytes, "groups": len(node_store.names()),
         "spilled": int(node_store.spilled)})}), reply_to=msg)
