"""The ClientApp: one node hosts one bucket of users, found from its ``partition-id``.

Handlers dispatch on the run's algorithm: ``fedavg`` (:mod:`florec.client.fedavg_node`, every user a
logical client) or ``fedcia`` / ``local`` (:mod:`florec.client.private_node`, the bucket is one
client with a whole private model). Private parameters stay in the node's store
(:mod:`florec.client.node_store`) and never enter a reply. A node's data is its shard
(:mod:`florec.recdata.shard`): the folder its ``data-dir`` names, or, in simulation, its rows
cut from the split in memory. Three ``query`` messages serve the server: ``query.partition``
(the partition this node hosts and its sizes: the server learns the federation's sizes from
them and opens no data), ``query.catalogue`` (the public item text) and ``query.store``
(snapshot or restore the node's store at a checkpoint round, see
:mod:`florec.server.checkpoint`).
"""

# ruff: noqa: E402 (the module stamps its own import time before importing anything else)
from __future__ import annotations

import time

_IMPORT_START = time.time()  # the bench's phase log: how long this module takes to import

import json
import os
from collections.abc import Callable
from logging import ERROR
from types import ModuleType

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from florec.client.trainers.bucket import Bucket
from florec.protocol.fused import attach_evaluation, evaluation_request
from florec.recdata.errors import ConfigError
from florec.recdata.node_cache import node_cache
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.shard import node_key, shard_of_node

_IMPORT_END = time.time()
# Every ClientApp message is a new process in a deployment (Flower's process isolation), so this
# module imports only what every message needs; torch and a method's node module are imported
# by the handler that uses them (a ``query.partition`` never imports torch).
app = ClientApp()
#: with this set to a file, every message appends one JSON line of wall-clock stamps (process
#: start, this module's import, data load, the handler) for ``bench/deploy_rounds.py``
PHASE_LOG_ENV = "FLOREC_PHASE_LOG"


def __getattr__(name: str) -> object:
    """``PRIVATE_KEY``: the node-state key of FedAvg's private rows (imported on first use)."""
    if name == "PRIVATE_KEY":
        from florec.client import fedavg_node

        return fedavg_node.PRIVATE_KEY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def log_phases(kind: str, context: Context, start: float, loaded: float,
               lazy_s: float = 0.0) -> None:
    """Append this message's phase stamps to ``$FLOREC_PHASE_LOG`` (nothing if unset).

    ``start`` is when the handler began, ``loaded`` when the node's data was ready and
    ``lazy_s`` the seconds the handler spent importing the method's node module.
    """
    path = os.environ.get(PHASE_LOG_ENV)
    if not path:
        return
    import psutil

    row = {"app": "florec", "kind": kind, "node": int(context.node_config["partition-id"]),
           "pid": os.getpid(), "proc_start": psutil.Process().create_time(),
           "import_start": _IMPORT_START, "import_end": _IMPORT_END, "handler_start": start,
           "data_end": loaded, "lazy_imports_s": lazy_s, "handler_end": time.time()}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where available, else ``cpu``."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _load_bucket(cfg: RunConfig, node_config: dict) -> Bucket:
    # the shard is read once per process (the node cache keeps it: query.partition asks again)
    shard = shard_of_node(cfg, node_config)
    bucket = Bucket.from_split(shard.split, shard.clients)  # a list of clients' users
    shard.split._csr.clear()  # (n_users, n_items) matrices: one per node would add up
    return bucket


def node_setup(context: Context) -> tuple[RunConfig, Bucket, int]:
    """Run config, this node's bucket and its partition id.

    The bucket is kept in the process's byte-bounded node cache
    (:func:`florec.recdata.node_cache.node_cache`): a simulation actor that serves many nodes
    keeps the recently served ones, up to ``FLOREC_NODE_CACHE_MB``, and rebuilds the others.
    """
    cfg = parse_run_config(context.run_config)
    pid = int(context.node_config["partition-id"])
    node_config = {"partition-id": pid,
                   "num-partitions": int(context.node_config.get("num-partitions", -1)),
                   "data-dir": str(context.node_config.get("data-dir", ""))}
    key = ("bucket", *node_key(cfg, node_config))
    bucket = node_cache().get(key, lambda: _load_bucket(cfg, node_config))
    return cfg, bucket, pid


#: the sequential models (``florec.models.registry.SEQUENTIAL_MODELS``, which imports every
#: model; tests/client/test_app_cache.py checks the two agree), served by ``seq_node``
SEQUENTIAL_MODELS = ("sasrec", "gru4rec")


def _node(cfg: RunConfig) -> ModuleType:
    if cfg.model == "llkd":
        from florec.client import llkd_node

        return llkd_node
    if cfg.model == "llmd4rec":
        from florec.client import llmd4rec_node

        return llmd4rec_node
    if cfg.model == "cotrec":
        from florec.client import cotrec_node

        return cotrec_node
    if cfg.model in SEQUENTIAL_MODELS:
        from florec.client import seq_node

        return seq_node
    if cfg.algorithm == "fedavg":
        from florec.client import fedavg_node

        return fedavg_node
    from florec.client import private_node

    return private_node


def _call(name: str, msg: Message, context: Context) -> Message:
    start = time.time()
    cfg, bucket, pid = node_setup(context)
    loaded = time.time()
    node = _node(cfg)
    lazy_s = time.time() - loaded
    content = getattr(node, name)(msg, context, cfg, bucket, pid, resolve_device(cfg.device))
    log_phases(name, context, start, loaded, lazy_s)
    return Message(content, reply_to=msg)


def _guarded(part: str, handler: Callable[..., RecordDict], *args: object
             ) -> RecordDict | Exception:
    """The handler's reply, or the exception it raised (logged as Flower logs a failed app)."""
    try:
        return handler(*args)
    except Exception as exc:  # one part of a fused message: the other part still runs
        from flwr.supercore import log

        log(ERROR, "fused-evaluate: the %s part raised", part, exc_info=exc)
        return exc


def _fused(msg: Message, request: Message, context: Context) -> Message:
    """Evaluate the arrays the train message brings (round r-1's model), then train on them.

    One process, one data load and one torch import for both (``fused-evaluate``,
    :mod:`florec.protocol.fused`); the evaluation runs first, so it sees the node's private
    state as round r-1 left it, as a separate ``evaluate`` message would. Either part that
    raises is logged and replied as its error, as the separate message's error reply would be,
    and the other part still runs: a failed training keeps its evaluation, and the reverse.
    """
    start = time.time()
    cfg, bucket, pid = node_setup(context)
    loaded = time.time()
    node = _node(cfg)
    lazy_s = time.time() - loaded
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    evaluation = _guarded("evaluate", node.evaluate, request, context, cfg, bucket, pid, device)
    eval_s = time.perf_counter() - t0
    content = _guarded("train", node.train, msg, context, cfg, bucket, pid, device)
    log_phases("train+evaluate", context, start, loaded, lazy_s)
    return Message(attach_evaluation(content, evaluation, eval_s), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the bucket's users; the reply carries what the strategy aggregates.

    A fused message (``fused-evaluate``) first evaluates the model it carries; the reply then
    also holds that evaluation (:func:`florec.protocol.fused.attach_evaluation`).
    """
    request = evaluation_request(msg)
    if request is not None:
        return _fused(msg, request, context)
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
    """What the server may know of this node's data: partition, sizes, catalogue size.

    The reply carries the partition id, the node's number of users, the number of partitions,
    the population (users of the whole split, public in the run's setup) and the catalogue
    size, plus the source-data notes of ``results.json`` (``note.<key>.<part>``); no
    interaction, no user id.
    """
    start = time.time()
    cfg, bucket, pid = node_setup(context)
    shard = shard_of_node(cfg, context.node_config)
    log_phases("query", context, start, time.time())
    facts = {"partition-id": pid, "num-users": len(bucket.users),
             "num-partitions": shard.num_partitions, "population": shard.split.n_users,
             "num-items": shard.split.n_items}
    for key, parts in shard.notes.items():
        facts |= {f"note.{key}.{part}": int(n) for part, n in parts.items()}
    return Message(RecordDict({"metrics": MetricRecord(facts)}), reply_to=msg)


@app.query("catalogue")
def catalogue(msg: Message, context: Context) -> Message:
    """The public item text of the node's shard (a server that builds item-side state asks)."""
    cfg, _, _ = node_setup(context)
    texts = shard_of_node(cfg, context.node_config).item_texts()
    return Message(RecordDict({"config": ConfigRecord({"texts": list(texts)})}), reply_to=msg)


@app.query("store")
def store(msg: Message, context: Context) -> Message:
    """Snapshot (``action=snapshot``) or restore (``action=restore``) the node's store."""
    from florec.client.node_store import open_store, snapshot_path

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


def _agentcf(msg: Message, context: Context) -> Message:
    """AgentCF(++) messages: memories in the node store (:mod:`florec.client.agentcf_node`)."""
    from florec.client import agentcf_node

    cfg = parse_run_config(context.run_config)
    return Message(agentcf_node.flower_reply(msg, context, cfg), reply_to=msg)


@app.train("agentcf")
def agentcf_train(msg: Message, context: Context) -> Message:
    """One AgentCF training step of the node's users (forward choice and reflections)."""
    return _agentcf(msg, context)


@app.evaluate("agentcf")
def agentcf_evaluate(msg: Message, context: Context) -> Message:
    """AgentCF ranking of the node's test rows; metric sums up."""
    return _agentcf(msg, context)


@app.query("agentcf")
def agentcf_query(msg: Message, context: Context) -> Message:
    """AgentCF's questions: the node's partition, the public item side, its users' tags."""
    return _agentcf(msg, context)
