"""FedCIA and local-only on a node: the bucket is one client with a whole private model.

Per round: ``train`` runs one local epoch and uploads the client's item similarity (``E E^T``
or its factor ``E Q``, see :mod:`client.trainers.align`); ``align`` pulls the item table towards
the server's aggregate. The parameter-free GF-CF backbone uploads its Gram matrix (exact mode)
or its local filter (the paper's FedCIA-GSP) once and scores with what comes back.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from client.evaluation import bucket_metric_sums
from client.trainers.align import align_dense, align_factored, similarity_upload
from client.trainers.bucket import Bucket
from client.trainers.private_model import (
    build_node_model,
    fixed_triples,
    local_epoch,
    node_model_spec,
    restore,
    state_arrays,
)
from recdata.runconfig import RunConfig
from strategies.payload import from_record, to_record

STATE_PREFIX = "private-"


def _load(context: Context, cfg: RunConfig, bucket: Bucket, pid: int
          ) -> tuple[torch.nn.Module, torch.optim.Optimizer | None]:
    nparts = int(context.node_config.get("num-partitions", cfg.num_nodes))
    name, dim = node_model_spec(cfg, pid, nparts)
    model = build_node_model(cfg, bucket, name, dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr) if model.trainable else None
    saved = {key[len(STATE_PREFIX):]: from_record(rec)
             for key, rec in context.state.array_records.items() if key.startswith(STATE_PREFIX)}
    if saved:
        restore(model, optimizer, saved)
    return model, optimizer


def _save(context: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
          ) -> None:
    for key, arrays in state_arrays(model, optimizer).items():
        context.state[STATE_PREFIX + key] = to_record(arrays)


def _gfcf_upload(cfg: RunConfig, train: sp.csr_matrix, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    from models import gfcf

    if cfg.gfcf_mode == "exact":
        gram, degree = gfcf.client_gram(train)
        return {"gram": gram.astype(np.float64), "degree": degree.astype(np.float64)}
    filt = gfcf.local_filter(train, cfg.gfcf_s, cfg.gfcf_wp)
    if cfg.noise_scale > 0:
        filt = filt + rng.laplace(0.0, cfg.noise_scale, filt.shape)
    return {"filter": filt.astype(np.float32)}


def train(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """One local epoch, then the upload the server asked for (``dense``, ``factored``, none)."""
    t0 = time.perf_counter()
    config = msg.content.config_records["config"]
    rnd, upload = int(config["server-round"]), str(config.get("upload", "none"))
    rng = np.random.default_rng([cfg.seed, 31, rnd, pid])
    loss, optimizer = 0.0, None
    if upload != "gfcf":
        model, optimizer = _load(context, cfg, bucket, pid)
    if optimizer is not None:
        triples = fixed_triples(bucket, cfg.seed, pid)
        for _ in range(cfg.local_epochs):
            loss = local_epoch(model, optimizer, triples, cfg.local_batch_size, rng)
        _save(context, model, optimizer)
    arrays: dict[str, np.ndarray] = {}
    if upload == "gfcf":
        arrays = _gfcf_upload(cfg, bucket.train, rng)
    elif upload in ("dense", "factored"):
        emb = model.item_emb.detach().cpu().numpy()
        arrays = similarity_upload(emb, upload, cfg.noise_scale, rng)
    metrics = MetricRecord({"partition-id": pid, "train-loss": loss,
                            "num-examples": int(bucket.train.nnz),
                            "num-users": len(bucket.users), "seconds": time.perf_counter() - t0})
    return RecordDict({"arrays": to_record(arrays), "metrics": metrics})


def align(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
          device: str) -> RecordDict:
    """Align the item table to ``S_bar`` (dense) or ``A A^T`` (factored) and keep it."""
    t0 = time.perf_counter()
    down = from_record(msg.content.array_records["arrays"])
    model, optimizer = _load(context, cfg, bucket, pid)
    squared = cfg.align_norm == "squared"
    with torch.no_grad():
        emb = model.item_emb.data.to(device)
        fn, target = (align_dense, down["gram"]) if "gram" in down else \
            (align_factored, down["factor"])
        before, after = fn(emb, torch.as_tensor(target, device=device), cfg.align_steps,
                           cfg.align_lr, cfg.reg, squared)
        model.item_emb.data.copy_(emb.cpu())
    _save(context, model, optimizer)
    return RecordDict({"metrics": MetricRecord({
        "clients": 1, "align-before-sum": before, "align-after-sum": after,
        "align-seconds-sum": time.perf_counter() - t0})})


def evaluate(msg: Message, context: Context, cfg: RunConfig, bucket: Bucket, pid: int,
             device: str) -> RecordDict:
    """Metric sums with the private model, or with the federated GF-CF filter sent down."""
    down = from_record(msg.content.array_records["arrays"]) \
        if "arrays" in msg.content.array_records else {}
    if "filter" in down:
        from models import gfcf

        rows = torch.as_tensor(bucket.train.toarray(), dtype=torch.float64)
        glob = torch.as_tensor(down["filter"], dtype=torch.float64)
        if cfg.gfcf_mode == "gsp":
            local = torch.as_tensor(gfcf.local_filter(bucket.train, cfg.gfcf_s, cfg.gfcf_wp))
            scores = cfg.gfcf_aggp * rows @ glob + rows @ local
        else:
            scores = rows @ glob
        sums = bucket_metric_sums(lambda users: scores[users], bucket, cfg, pid, "cpu")
    else:
        model, _ = _load(context, cfg, bucket, pid)
        model.eval()
        sums = bucket_metric_sums(model.to(device).score, bucket, cfg, pid, device)
    return RecordDict({"metrics": MetricRecord(sums)})
