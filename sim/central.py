"""Centralized training on pooled data, with the split and metrics of federated runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.models.base import Recommender
from florec.models.metrics import evaluate_users, finalize
from florec.models.registry import SEQUENTIAL_MODELS, model_from_config
from florec.recdata.runconfig import RunConfig
from florec.recdata.sampling import sample_negatives
from florec.recdata.seeds import Salt, stream
from florec.recdata.splits import Split
from florec.recdata.store import get_split
from florec.sim.central_loop import fit_and_select


def item_popularity(split: Split) -> np.ndarray:
    """Train interaction count of every item (the ``pop_i`` of ARP)."""
    train = split.matrix("train").tocsc()
    return np.diff(train.indptr).astype(np.float64)


def evaluate_model(
    model: Recommender,
    split: Split,
    part: str,
    ks: list[int],
    chunk: int = 1024,
    device: str = "cpu",
) -> dict[str, float]:
    """Per-user averaged full-ranking metrics of ``model`` on ``valid`` or ``test``.

    Besides accuracy, ``arp@K`` (mean train popularity of the listed items) and ``coverage@K``
    (share of the catalogue listed for at least one user) are reported.
    """
    users = np.arange(split.n_users)
    pop = item_popularity(split)
    model.eval()
    with torch.no_grad():
        sums = evaluate_users(
            model.score, users, split.mask_for(part), split.matrix(part), ks, chunk, device,
            item_pop=pop, coverage=True,
        )
    model.train()
    return finalize(sums)


def train_epoch(
    model: Recommender,
    split: Split,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    batch_size: int,
    device: str = "cpu",
) -> float:
    """One pass over all training interactions in shuffled minibatches of BPR triples.

    Returns
    -------
    float
        Mean training loss of the epoch.

    """
    train = split.matrix("train")
    coo = train.tocoo()
    order = rng.permutation(coo.nnz)
    users, pos = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    neg = sample_negatives(users, train, rng.random(len(users)))
    total = 0.0
    for s in range(0, len(users), batch_size):
        sl = slice(s, s + batch_size)
        batch = [torch.as_tensor(a[sl], device=device) for a in (users, pos, neg)]
        optimizer.zero_grad()
        loss = model.loss(*batch)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch[0])
    return total / max(len(users), 1)


def run_central(
    cfg: RunConfig, epochs: int, batch_size: int, out_dir: Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Train ``cfg.model`` centrally for ``epochs`` epochs; test at the best validation epoch.

    Returns the run's entry of ``results.json`` (and writes the folder if ``out_dir`` is given).
    Sequential models train in :mod:`florec.sim.central_seq`, MF with a debiasing loss (``mf-loss``
    other than ``bpr``) in :mod:`florec.sim.central_fair`.
    """
    if cfg.model in ("agentcf", "agentcf++"):
        from florec.sim.central_agentcf import run_central_agentcf

        return run_central_agentcf(cfg, out_dir)
    if cfg.model == "cotrec":
        from florec.sim.central_cotrec import run_central_cotrec

        return run_central_cotrec(cfg, epochs, batch_size, out_dir, device)
    if cfg.model == "llmd4rec":
        from florec.sim.central_llmd4rec import run_central_llmd4rec

        return run_central_llmd4rec(cfg, epochs, batch_size, out_dir, device)
    if cfg.model == "llkd":
        from florec.sim.central_llkd import run_central_llkd

        return run_central_llkd(cfg, epochs, out_dir)
    if cfg.model in SEQUENTIAL_MODELS:
        from florec.sim.central_seq import run_central_seq

        return run_central_seq(cfg, epochs, batch_size, out_dir, device)
    if cfg.mf_loss != "bpr":
        from florec.sim.central_fair import run_central_fair

        return run_central_fair(cfg, epochs, batch_size, out_dir, device)
    t_start = time.perf_counter()
    split, _ = get_split(
        cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating, cfg.synthetic_params()
    )
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, cfg.model, split.n_users, split.n_items).to(device)
    if hasattr(model, "fit"):  # counts (Pop), a filter (GF-CF) or a graph (LightGCN)
        model.fit(split.matrix("train"))
    epochs = epochs if model.trainable else 0
    rng = stream(cfg.seed, Salt.CENTRAL_SHUFFLE)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) \
        if epochs else None
    return fit_and_select(
        cfg, cfg.model, epochs,
        train_epoch=lambda: {"train-loss": train_epoch(model, split, optimizer, rng, batch_size,
                                                       device)},
        validate=lambda: evaluate_model(model, split, "valid", cfg.k_list, cfg.eval_chunk, device),
        test=lambda: evaluate_model(model, split, "test", cfg.k_list, cfg.eval_chunk, device),
        out_dir=out_dir,
        config=cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size, "setting": "central"},
        t_start=t_start, model=model)
