"""A client that keeps a whole private model (FedCIA, local-only): build, train, save, restore.

The model of a node is chosen by ``model`` or, in heterogeneous runs, by ``model-mix``
(``"mf:64,lightgcn:64,mlp:32"`` gives the first third of the partitions MF with d=64, and so
on). Item rows start from the same seeded rows on every client with the same d; user rows are
seeded by global user id. The model and its Adam state persist in the node's state.
"""

from __future__ import annotations

import numpy as np
import torch

from florec.client.trainers.bucket import Bucket
from florec.models.base import Recommender, seeded_rows
from florec.models.mf import MF, USER_SALT
from florec.models.registry import model_from_config
from florec.models.rng import seed_torch
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.recdata.sampling import sample_negatives
from florec.recdata.seeds import Salt, stream

MODEL_KEY, OPT_KEY = "model", "optimizer"


def node_model_spec(cfg: RunConfig, partition_id: int, num_partitions: int) -> tuple[str, int]:
    """(model name, embedding size) of one node; ``model-mix`` splits partitions evenly."""
    if not cfg.model_mix:
        return cfg.model, cfg.dim
    parts = []
    for part in cfg.model_mix.split(","):
        name, _, dim = part.strip().partition(":")
        if not dim.isdigit():
            raise ConfigError(f"bad model-mix part '{part}': write MODEL:DIM, e.g. 'mf:64,mlp:32'")
        parts.append((name, int(dim)))
    return parts[min(len(parts) - 1, partition_id * len(parts) // max(num_partitions, 1))]


def build_node_model(cfg: RunConfig, bucket: Bucket, name: str, dim: int) -> Recommender:
    """A fresh private model for the bucket's users (graph models get the bucket's graph)."""
    seed_torch(cfg.seed)  # identical backbone weights on every client of a kind
    model = model_from_config(cfg, name, len(bucket.users), bucket.n_items, dim=dim)
    if hasattr(model, "user_emb"):
        with torch.no_grad():
            model.user_emb.copy_(torch.from_numpy(
                seeded_rows(bucket.users, dim, cfg.seed, cfg.init_std, USER_SALT)))
    if hasattr(model, "fit"):
        model.fit(bucket.train)
    return model


def fixed_triples(bucket: Bucket, seed: int, partition_id: int) -> tuple[np.ndarray, ...]:
    """Every training interaction once with one uniform negative, drawn once per client.

    FedCIA draws a client's triple set once, when the data is built, and reuses it every round.
    """
    coo = bucket.train.tocoo()
    rng = stream(seed, Salt.PRIVATE_TRIPLES, partition_id)
    users = coo.row.astype(np.int64)
    return users, coo.col.astype(np.int64), sample_negatives(users, bucket.train,
                                                              rng.random(len(users)))


def config_clients(split, cfg: RunConfig) -> tuple[list[Bucket], list[tuple[np.ndarray, ...]]]:
    """The FedCIA clients of a run config over a split, with each client's fixed triples.

    The clients of every node in partition order, cut by
    :func:`florec.recdata.partition.node_clients_of` (the run's partition keys, the server's
    and the shards' cut), and :func:`fixed_triples` of each, as the nodes build them.
    """
    from florec.recdata.partition import node_clients_of

    nodes = node_clients_of(cfg, split.n_users)
    clients = [Bucket.from_split(split, u) for node in nodes for u in node]
    return clients, [fixed_triples(c, cfg.seed, k) for k, c in enumerate(clients)]


def local_epoch(model: Recommender, optimizer: torch.optim.Optimizer,
                triples: tuple[np.ndarray, ...], batch_size: int,
                rng: np.random.Generator) -> float:
    """One shuffled pass over the triples; returns the mean loss."""
    order = rng.permutation(len(triples[0]))
    device = next(model.parameters()).device
    total = 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = [torch.as_tensor(t[idx], device=device) for t in triples]
        optimizer.zero_grad()
        loss = model.loss(*batch)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / max(len(order), 1)


def train_one_by_one(states: list[dict[str, dict[str, np.ndarray]]],
                     triples: list[tuple[np.ndarray, ...]], rngs: list[np.random.Generator],
                     epochs: int, batch_size: int, lr: float, reg: float = 0.0,
                     device: str = "cpu"
                     ) -> tuple[list[dict[str, dict[str, np.ndarray]]], list[list[float]]]:
    """MF clients trained in turn, each its own MF, autograd and ``torch.optim.Adam``.

    The reference of :func:`florec.client.trainers.private_batch.train_mf_clients` (same
    arguments and returns; states in either layout, returned in :func:`state_arrays`').
    """
    new, losses = [], []
    for state, trip, rng in zip(states, triples, rngs, strict=True):
        items, dim = state[MODEL_KEY]["item_emb"].shape
        model = MF(len(state[MODEL_KEY]["user_emb"]), items, dim=dim, reg=reg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        restore(model, optimizer, state)
        losses.append([local_epoch(model, optimizer, trip, batch_size, rng)
                       for _ in range(epochs)])
        new.append(state_arrays(model, optimizer))
    return new, losses


def state_arrays(model: Recommender, optimizer: torch.optim.Optimizer | None
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Model and optimizer state as flat numpy dicts (for the node's state)."""
    out = {MODEL_KEY: {k: v.detach().cpu().numpy().copy()
                       for k, v in model.state_dict().items()}}
    if optimizer is not None:
        flat = {}
        for idx, st in optimizer.state_dict()["state"].items():
            for key, val in st.items():
                flat[f"{idx}.{key}"] = torch.as_tensor(val).cpu().numpy().copy()
        out[OPT_KEY] = flat
    return out


def restore(model: Recommender, optimizer: torch.optim.Optimizer | None,
            saved: dict[str, dict[str, np.ndarray]]) -> None:
    """Load what :func:`state_arrays` (or the batched trainer) saved.

    Moments stored for some rows only (``<p>.rows`` next to ``<p>.exp_avg``/``.exp_avg_sq``,
    :mod:`florec.client.trainers.private_batch`) are expanded: every other row's moments are 0.
    Such compact states are expanded for evaluation and for going on training in the batched
    trainer (which reads them itself); loading them into a plain ``torch.optim.Adam`` to go on
    training is not supported (no test checks that it matches the batched trainer's steps).
    """
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in saved[MODEL_KEY].items()})
    if optimizer is not None and saved.get(OPT_KEY):
        params = optimizer.param_groups[0]["params"]
        flat = saved[OPT_KEY]
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in flat.items():
            idx, name = key.split(".", 1)
            if name == "rows":
                continue
            tensor = torch.from_numpy(val.copy())
            rows = flat.get(f"{idx}.rows")
            if rows is not None and name != "step":
                full = torch.zeros(params[int(idx)].shape, dtype=tensor.dtype)
                full[torch.from_numpy(rows)] = tensor
                tensor = full
            state.setdefault(int(idx), {})[name] = tensor
        sd = optimizer.state_dict()
        sd["state"] = state
        optimizer.load_state_dict(sd)
