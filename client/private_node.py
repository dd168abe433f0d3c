"""FedCIA and local-only on a node: each client of the node keeps a whole private model.

A node hosts ``clients-per-node`` clients (one by default). Per round: ``train`` runs one local
epoch per client and uploads the node's sum of its clients' item similarities (``sum_k w_k
E_k E_k^T``, or the stacked factors ``[sqrt(w_k) E_k Q_k]`` whose product is that sum, see
:mod:`florec.client.trainers.align`) with the total weight; ``align`` pulls every client's item
table towards the server's aggregate, batched over the node's clients. The parameter-free GF-CF
backbone uploads its Gram matrix (exact mode) or local filters (the paper's FedCIA-GSP) once.
Each client's model and optimiser state live in the node's
:class:`florec.client.node_store.NodeStore` (groups ``private-<client>-model`` / ``-optimizer``).
A node's MF clients train batched (:mod:`florec.client.trainers.private_batch`: each client's
result is its own model's and Adam's; their item moments are stored for the rows that can move
only); other models train one at a time. Alignment changes the stored item tables only.
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
from florec.client.trainers.align import align_eigen, align_factored, similarity_upload
from florec.client.trainers.bucket import Bucket
from florec.client.trainers.private_batch import fresh_states, train_mf_clients
from florec.client.trainers.private_model import (
    MODEL_KEY,
    OPT_KEY,
    build_node_model,
    fixed_triples,
    local_epoch,
    node_model_spec,
    restore,
    state_arrays,
)
from florec.models.metrics import add_sums
from florec.models.rng import seed_torch
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


def _train_clients(store: NodeStore, context: Context, cfg: RunConfig, clients: list[Bucket],
                   indices: list[int], rngs: list[np.random.Generator], device: str
                   ) -> tuple[list[np.ndarray | None], list[list[float]]]:
    """Every client's local epochs; each one's item table afterwards and its epoch losses.

    MF clients (of one embedding size) train together, batched
    (:func:`florec.client.trainers.private_batch.train_mf_clients`: what each one's own model
    and Adam give); other models one at a time.
    """
    total = int(context.node_config.get("num-partitions", cfg.num_nodes)) * cfg.clients_per_node
    tables: list[np.ndarray | None] = [None] * len(clients)
    losses: list[list[float]] = [[] for _ in clients]
    mf: dict[int, list[int]] = {}
    for local, (client, index) in enumerate(zip(clients, indices, strict=True)):
        name, dim = node_model_spec(cfg, index, total)
        if name == "mf":
            mf.setdefault(dim, []).append(local)
            continue
        model, optimizer = _load(store, context, cfg, client, index, device)
        if optimizer is not None:
            triples = fixed_triples(client, cfg.seed, index)
            for _ in range(cfg.local_epochs):
                losses[local].append(local_epoch(model, optimizer, triples,
                                                 cfg.local_batch_size, rngs[local]))
            _save(store, index, model, optimizer)
        if hasattr(model, "item_emb"):
            tables[local] = model.item_emb.detach().cpu().numpy()
    for dim, members in mf.items():
        seed_torch(cfg.seed)  # the global generator as each client's MF build left it
        states = _stored_states(store, cfg, [clients[i] for i in members],
                                [indices[i] for i in members], dim)
        new, lost = train_mf_clients(
            states, [fixed_triples(clients[i], cfg.seed, indices[i]) for i in members],
            [rngs[i] for i in members], cfg.local_epochs, cfg.local_batch_size, cfg.lr,
            cfg.reg, device)
        for i, state, epoch_losses in zip(members, new, lost, strict=True):
            for key, arrays in state.items():
                store.put(f"{STATE_PREFIX}{indices[i]}-{key}", arrays)
            tables[i], losses[i] = state[MODEL_KEY]["item_emb"], epoch_losses
    return tables, losses


def _stored_states(store: NodeStore, cfg: RunConfig, clients: list[Bucket], indices: list[int],
                   dim: int) -> list[dict[str, dict[str, np.ndarray]]]:
    """MF clients' stored states; a new client's model as :func:`build_node_model` builds it."""
    saved = [store.get(f"{STATE_PREFIX}{index}-{MODEL_KEY}") for index in indices]
    new = [j for j, s in enumerate(saved) if s is None]
    fresh = dict(zip(new, fresh_states([clients[j] for j in new], dim, cfg.seed, cfg.init_std),
                     strict=True))
    return [fresh[j] if s is None else
            {MODEL_KEY: s, OPT_KEY: store.get(f"{STATE_PREFIX}{indices[j]}-{OPT_KEY}") or {}}
            for j, s in enumerate(saved)]


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
    indices = [_client_index(cfg, pid, local) for local in range(len(clients))]
    rngs = [stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, index) for index in indices]
    if upload != "gfcf":
        tables, client_losses = _train_clients(store, context, cfg, clients, indices, rngs,
                                               device)
        for client, index, rng, table, lost in zip(clients, indices, rngs, tables,
                                                   client_losses, strict=True):
            losses += lost
            if upload not in ("dense", "factored"):
                continue
            w = _weight(cfg, client)
            emb = table * np.sqrt(w)
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
    """Align every client's table to ``Q Lambda Q^T`` (dense) or ``A A^T`` (factored), batched."""
    t0 = time.perf_counter()
    down = from_record(msg.content.array_records["arrays"])
    store = open_store(context, cfg.store_spill_mb)
    clients = bucket.clients()
    names = [f"{STATE_PREFIX}{_client_index(cfg, pid, i)}-{MODEL_KEY}"
             for i in range(len(clients))]
    saved = [store.get(name) for name in names]
    loaded = {i: _load(store, context, cfg, c, _client_index(cfg, pid, i))
              for i, c in enumerate(clients) if saved[i] is None}  # never trained: as built
    embs = [loaded[i][0].item_emb.data.to(device) if i in loaded else
            torch.from_numpy(saved[i]["item_emb"].copy()).to(device)
            for i in range(len(clients))]
    if "basis" not in down and "factor" not in down:
        raise ValueError(f"the align message carries {sorted(down)}, expected 'basis' and "
                         "'eigvals' (dense) or 'factor' (factored): run server and nodes from "
                         "the same FloRec version")
    steps = (cfg.align_steps, cfg.align_lr, cfg.reg, cfg.align_norm == "squared")
    with torch.no_grad():
        if "basis" in down:
            before, after = align_eigen(embs, torch.as_tensor(down["basis"], device=device),
                                        torch.as_tensor(down["eigvals"], device=device), *steps,
                                        norm_sq=float(down["norm-sq"][0]))
        else:
            before, after = align_factored(
                embs, torch.as_tensor(down["factor"], device=device), *steps)
    for i, emb in enumerate(embs):  # only the item table changes: the optimizer stays stored
        if i in loaded:
            model, optimizer = loaded[i]
            model.item_emb.data.copy_(emb.cpu())
            _save(store, _client_index(cfg, pid, i), model, optimizer)
        else:
            store.put(names[i], saved[i] | {"item_emb": emb.cpu().numpy()})
    store.commit()
    return RecordDict({"metrics": MetricRecord({
        "clients": len(embs), "align-before-sum": float(np.sum(before)),
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
