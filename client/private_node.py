"""FedCIA and local-only on a node: each client of the node keeps a whole private model.

A node hosts ``clients-per-node`` clients (one by default). Per round: ``train`` runs one local
epoch per client and uploads the node's sum of its clients' item similarities (``sum_k w_k
E_k E_k^T``, or the stacked factors ``[sqrt(w_k) E_k Q_k]`` whose product is that sum, see
:mod:`florec.client.trainers.align`) with the total weight; ``align`` pulls every client's item
table towards the server's aggregate, batched over the node's clients. The parameter-free GF-CF
backbone uploads its Gram matrix (exact mode) or local filters (the paper's FedCIA-GSP) once.
Each client's model and optimiser state live in the node's
:class:`florec.client.node_store.NodeStore` (groups ``private-<client>-model`` / ``-optimizer``).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from florec.client.attacks import node_knowledge, poison_similarity
from florec.client.evaluation import bucket_metric_sums
from florec.client.node_store import NodeStore, open_store
from florec.client.trainers.align import align_dense, align_factored, similarity_upload
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.private_model import (
    build_node_model,
    fixed_triples,
    local_epoch,
    node_model_spec,
    restore,
    state_arrays,
)
from florec.models.metrics import add_sums
from florec.protocol.codec import from_record, to_record
from florec.protocol.similarity_dp import clip_similarity
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream

STATE_PREFIX = "private-"


def _client_index(cfg: RunConfig, pid: int, local: int) -> int:
    return pid * cfg.clients_per_node + local


def _load(store: NodeStore, context: Context, cfg: RunConfig, client: Bucket, index: int,
          device: str = "cpu") -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    total = int(context.node_config.get("num-partitions", cfg.num_nodes)) * cfg.clients_per_node
    name, dim = node_model_spec(cfg, index, total)
    model = build_node_model(cfg, client, name, dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr) if model.trainable else None
    prefix = f"{STATE_PREFIX}{index}-"
    saved = {name[len(prefix):]: store.get(name) for name in store.names()
             if name.startswith(prefix)}
    if saved:
        restore(model, optimizer, saved)
    return model, optimizer


def _save(store: NodeStore, index: int, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer | None) -> None:
    for key, arrays in state_arrays(model, optimizer).items():
        store.put(f"{STATE_PREFIX}{index}-{key}", arrays)


def _weight(cfg: RunConfig, client: Bucket) -> float:
    return float(client.train.nnz) if cfg.fedcia_weighting == "interactions" else 1.0


def _gfcf_upload(cfg: RunConfig, clients: list[Bucket], whole: sp.csr_matrix,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    from florec.models import gfcf

    if cfg.gfcf_mode == "exact":  # user degrees are per user: the node's Gram is the clients' sum
        gram, degree = gfcf.client_gram(whole)
        return {"gram": gram.astype(np.float64), "degree": degree.astype(np.float64)}
    total = sum(gfcf.local_filter(c.train, cfg.gfcf_s, cfg.gfcf_wp) for c in clients)
    if cfg.noise_scale > 0:
        total = total + rng.laplace(0.0, cfg.noise_scale, total.shape)
    return {"filter": np.asarray(total, dtype=np.float32)}


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """One local epoch per client, then the upload the server asked for."""
    t0 = time.perf_counter()
    config = msg.content.config_records["config"]
    rnd, upload = int(config["server-round"]), str(config.get("upload", "none"))
    clients = bucket.clients()
    store = open_store(context, cfg.store_spill_mb)
    losses, uploads, weights = [], [], []
    know = node_knowledge(cfg, context)
    for local, client in enumerate(clients):
        index = _client_index(cfg, pid, local)
        rng = stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, index)
        if upload == "gfcf":
            break
        model, optimizer = _load(store, context, cfg, client, index, device)
        if optimizer is not None:
            triples = fixed_triples(client, cfg.seed, index)
            for _ in range(cfg.local_epochs):
                losses.append(local_epoch(model, optimizer, triples, cfg.local_batch_size, rng))
            _save(store, index, model, optimizer)
        if upload in ("dense", "factored"):
            w = _weight(cfg, client)
            emb = model.item_emb.detach().cpu().numpy() * np.sqrt(w)
            emb = poison_similarity(cfg, know, index, emb)  # malicious clients (issue 18)
            if cfg.dp:  # user-level DP: ||E E^T||_F <= dp-clip (protocol/similarity_dp.py)
                emb, _ = clip_similarity(emb, cfg.dp_clip)
            uploads.append(similarity_upload(emb, upload, cfg.noise_scale, rng))
            weights.append(w)
    store.commit()
    arrays: dict[str, np.ndarray] = {}
    if upload == "gfcf":
        arrays = _gfcf_upload(cfg, clients, bucket.train,
                              stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, pid))
        weights = [float(len(clients))]
    elif upload == "dense":
        arrays = {"gram": np.sum([u["gram"] for u in uploads], axis=0, dtype=np.float64
                                 ).astype(np.float32)}
    elif upload == "factored":
        arrays = {"factor": np.concatenate([u["factor"] for u in uploads], axis=1)}
    metrics = MetricRecord({
        "partition-id": pid, "train-loss": float(np.mean(losses)) if losses else 0.0,
        "num-examples": int(bucket.train.nnz), "num-users": len(bucket.users),
        "clients": len(clients), "weight": float(sum(weights)),
        "seconds": time.perf_counter() - t0})
    return RecordDict({"arrays": to_record(arrays), "metrics": metrics})


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Align every client's item table to ``S_bar`` (dense) or ``A A^T`` (factored), batched."""
    t0 = time.perf_counter()
    down = from_record(msg.content.array_records["arrays"])
    store = open_store(context, cfg.store_spill_mb)
    loaded = [_load(store, context, cfg, c, _client_index(cfg, pid, i))
              for i, c in enumerate(bucket.clients())]
    embs = [model.item_emb.data.to(device) for model, _ in loaded]
    fn, target = (align_dense, down["gram"]) if "gram" in down else \
        (align_factored, down["factor"])
    with torch.no_grad():
        before, after = fn(embs, torch.as_tensor(target, device=device), cfg.align_steps,
                           cfg.align_lr, cfg.reg, cfg.align_norm == "squared")
    for i, ((model, optimizer), emb) in enumerate(zip(loaded, embs, strict=True)):
        model.item_emb.data.copy_(emb.cpu())
        _save(store, _client_index(cfg, pid, i), model, optimizer)
    store.commit()
    return RecordDict({"metrics": MetricRecord({
        "clients": len(loaded), "align-before-sum": float(np.sum(before)),
        "align-after-sum": float(np.sum(after)),
        "align-seconds-sum": time.perf_counter() - t0})})


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Metric sums with each client's private model, or with the federated GF-CF filter."""
    down = from_record(msg.content.array_records["arrays"]) \
        if "arrays" in msg.content.array_records else {}
    sums: dict[str, float] = {}
    store = None if "filter" in down else open_store(context, cfg.store_spill_mb)
    for local, client in enumerate(bucket.clients()):
        if "filter" in down:
            score_fn = _gfcf_scores(cfg, client, down["filter"])
            part = bucket_metric_sums(score_fn, client, cfg, pid, "cpu")
        else:
            model, _ = _load(store, context, cfg, client, _client_index(cfg, pid, local))
            model.eval()
            part = bucket_metric_sums(model.to(device).score, client, cfg, pid, device,
                                      know=node_knowledge(cfg, context))  # issue 18
        part.pop("partition-id")
        sums = add_sums(sums, part)
    return RecordDict({"metrics": MetricRecord(sums | {"partition-id": pid})})


def _gfcf_scores(cfg: RunConfig, client: Bucket, glob: np.ndarray):  # noqa: ANN202
    from florec.models import gfcf

    rows = torch.as_tensor(client.train.toarray(), dtype=torch.float64)
    glob_t = torch.as_tensor(glob, dtype=torch.float64)
    if cfg.gfcf_mode == "gsp":
        local = torch.as_tensor(gfcf.local_filter(client.train, cfg.gfcf_s, cfg.gfcf_wp))
        scores = cfg.gfcf_aggp * rows @ glob_t + rows @ local
    else:
        scores = rows @ glob_t
    return lambda users: scores[users]
