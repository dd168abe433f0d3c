"""Centralized training on pooled data, with the split and metrics of federated runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Recommender
from models.metrics import evaluate_users, finalize
from models.registry import SEQUENTIAL_MODELS, build_model
from recdata.runconfig import RunConfig
from recdata.sampling import sample_negatives
from recdata.splits import Split
from recdata.store import get_split
from server.results import ResultsWriter, peak_rss_mb, run_entry


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
    Sequential models train in :mod:`sim.central_seq`, MF with a debiasing loss (``mf-loss``
    other than ``bpr``) in :mod:`sim.central_fair`.
    """
    if cfg.model in SEQUENTIAL_MODELS:
        from sim.central_seq import run_central_seq

        return run_central_seq(cfg, epochs, batch_size, out_dir, device)
    if cfg.mf_loss != "bpr":
        from sim.central_fair import run_central_fair

        return run_central_fair(cfg, epochs, batch_size, out_dir, device)
    t_start = time.perf_counter()
    split, _ = get_split(
        cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating, cfg.synthetic_params()
    )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, split.n_users, split.n_items, dim=cfg.dim, seed=cfg.seed,
                        init_std=cfg.init_std, reg=cfg.reg, layers=cfg.layers,
                        hidden=cfg.hidden, s=cfg.gfcf_s, wp=cfg.gfcf_wp).to(device)
    writer = ResultsWriter(out_dir) if out_dir else None
    config = cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size, "setting": "central"}
    if writer:
        writer.write_config(config)
    run = run_entry(cfg.model, "central", cfg.dataset, cfg.split, cfg.seed)
    if hasattr(model, "fit"):  # counts (Pop), a filter (GF-CF) or a graph (LightGCN)
        model.fit(split.matrix("train"))
    if not model.trainable:
        epochs = 0
        run.update(best_round=0, valid_metrics=evaluate_model(model, split, "valid", cfg.k_list),
                   metrics=evaluate_model(model, split, "test", cfg.k_list))
    rng = np.random.default_rng([cfg.seed, 23])
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) \
        if epochs else None
    best, since_best = -np.inf, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, split, optimizer, rng, batch_size, device)
        row: dict[str, Any] = {"round": epoch, "train": {"train-loss": loss}}
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            valid = evaluate_model(model, split, "valid", cfg.k_list, cfg.eval_chunk, device)
            row["valid"] = valid
            if valid[cfg.selection_metric] > best:
                best, since_best = valid[cfg.selection_metric], 0
                test = evaluate_model(model, split, "test", cfg.k_list, cfg.eval_chunk, device)
                run.update(best_round=epoch, metrics=test, valid_metrics=valid)
            else:
                since_best += 1
        row.update(seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
        run.update(rounds=epoch)
        if writer:
            writer.append_round(row)
        if cfg.patience and since_best >= cfg.patience:
            break
    run.update(wall_s=time.perf_counter() - t_start, peak_rss_mb=peak_rss_mb())
    if writer:
        writer.write_results(config, [run])
    return run
