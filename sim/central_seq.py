"""Centralized training of sequential recommenders (SASRec, GRU4Rec, each +Oracle4Rec).

Same results folder and protocol as :func:`sim.central.run_central`: per-epoch rows in
``rounds.jsonl``, full-ranking validation every ``eval-every`` epochs, the test split evaluated at
each strict improvement of ``selection-metric`` (so the reported test metrics are those of the
best validation epoch), early stop after ``patience`` evaluations without improvement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.trainers.sequential import (
    make_optimizers,
    resolve_device,
    sequence_metric_sums,
    train_epoch,
)
from models.metrics import finalize
from models.registry import sequential_from_config
from recdata.runconfig import RunConfig
from recdata.sequences import UserSequences
from recdata.store import get_split
from server.results import ResultsWriter, peak_rss_mb, run_entry


def seq_method_name(cfg: RunConfig) -> str:
    """``sasrec``, ``gru4rec``, or ``oracle4rec-<backbone>`` when ``oracle`` is on."""
    return f"oracle4rec-{cfg.model}" if cfg.oracle else cfg.model


def _split_means(sums: dict[str, float], part: str) -> dict[str, float]:
    prefix = f"{part}/"
    return finalize({k[len(prefix):]: v for k, v in sums.items() if k.startswith(prefix)})


def run_central_seq(cfg: RunConfig, epochs: int, batch_size: int, out_dir: Path | None = None,
                    device: str = "cpu") -> dict[str, Any]:
    """Train ``cfg.model`` (+Oracle4Rec) on every user's train sequence; test at the best epoch.

    Parameters
    ----------
    cfg : RunConfig
        Run config (model, dataset, split, seq-loss, oracle knobs, lr, seed, ...).
    epochs, batch_size : int
        Epoch cap and training positions per minibatch.
    out_dir : Path, optional
        Results folder (config.json, rounds.jsonl, results.json).
    device : str
        ``cpu`` defers to ``cfg.device`` (``auto`` picks CUDA where available).

    Returns
    -------
    dict
        The run's entry of ``results.json``.

    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device) if device == "cpu" else device
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    length = cfg.max_seq_len
    windows = seqs.inputs(users, "train", length)
    inputs = {part: seqs.inputs(users, part, length) for part in ("valid", "test")}
    masks = {part: split.mask_for(part) for part in ("valid", "test")}
    truths = {part: split.matrix(part) for part in ("valid", "test")}
    torch.manual_seed(cfg.seed)  # dropout
    model = sequential_from_config(cfg, split.n_items).to(device)
    optimizers = make_optimizers(model, cfg.lr)
    rng = np.random.default_rng([cfg.seed, 37])

    writer = ResultsWriter(out_dir) if out_dir else None
    config = cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size, "setting": "central",
                                "device-used": device}
    if writer:
        writer.write_config(config)
    run = run_entry(seq_method_name(cfg), "central", cfg.dataset, cfg.split, cfg.seed)
    best, since_best = -np.inf, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        stats = train_epoch(model, optimizers, windows, split.n_items, rng, batch_size,
                            cfg.seq_loss, device)
        row: dict[str, Any] = {"round": epoch, "train": stats.means(),
                               "train_seconds": time.perf_counter() - t0}
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            sums = sequence_metric_sums(model, inputs, masks, truths, cfg.k_list,
                                        cfg.eval_chunk, device)
            valid = _split_means(sums, "valid")
            row["valid"] = valid
            if valid[cfg.selection_metric] > best:
                best, since_best = valid[cfg.selection_metric], 0
                run.update(best_round=epoch, metrics=_split_means(sums, "test"),
                           valid_metrics=valid)
            else:
                since_best += 1
        row.update(seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
        run.update(rounds=epoch, wall_s=time.perf_counter() - t_start)
        if writer:
            writer.append_round(row)
            writer.write_results(config, [run], status="running")
        if cfg.patience and since_best >= cfg.patience:
            break
    run.update(wall_s=time.perf_counter() - t_start, peak_rss_mb=peak_rss_mb())
    if writer:
        writer.write_results(config, [run])
    return run
