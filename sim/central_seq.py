"""Centralized training of sequential recommenders (SASRec, GRU4Rec, each +Oracle4Rec).

Same results folder and protocol as :func:`florec.sim.central.run_central` (the shared loop of
:mod:`florec.sim.central_loop`): the test split is evaluated only at a validation improvement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.client.trainers.sequential import (
    make_optimizers,
    resolve_device,
    sequence_metric_sums,
    train_epoch,
)
from florec.models.metrics import split_metrics
from florec.models.registry import sequential_from_config
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream
from florec.recdata.sequences import UserSequences
from florec.recdata.store import get_split
from florec.sim.central_loop import fit_and_select


def seq_method_name(cfg: RunConfig) -> str:
    """``sasrec``, ``gru4rec``, or ``oracle4rec-<backbone>`` when ``oracle`` is on."""
    return f"oracle4rec-{cfg.model}" if cfg.oracle else cfg.model


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
    optimizers = make_optimizers(model, cfg.lr, cfg.weight_decay)
    rng = stream(cfg.seed, Salt.CENTRAL_SEQUENCE)

    def evaluate(part: str) -> dict[str, float]:
        return split_metrics(sequence_metric_sums(model, inputs, masks, truths, cfg.k_list,
                                                  cfg.eval_chunk, device, parts=(part,)), part)

    return fit_and_select(
        cfg, seq_method_name(cfg), epochs,
        train_epoch=lambda: train_epoch(model, optimizers, windows, split.n_items, rng,
                                        batch_size, cfg.seq_loss, device).means(),
        validate=lambda: evaluate("valid"), test=lambda: evaluate("test"), out_dir=out_dir,
        config=cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size,
                                  "setting": "central", "device-used": device},
        t_start=t_start)
