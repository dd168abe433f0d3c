"""Centralized MF with a popularity-debiasing loss (``mf-loss``): Fair Sampling and its baselines.

Exactly the protocol of fair_sampling.md section 2: score ``p_u . q_i`` (no bias), one Adam over
the whole user and item tables with coupled ``weight-decay`` (dense: every row decays at every
step), **summed** losses, batches of ``batch_size``.

- Pair-wise (``ubpr``, ``cpr``, ``fs-pair``; ``bpr`` if called directly): one pass over the
  shuffled train pairs. UBPR draws its second item uniformly from all items; CPR and FS-Pair use
  the in-batch partner of :func:`florec.recdata.fair_sampling.pair_partners` (dropped pairs
  counted).
- Point-wise (``wmf``, ``relmf``, ``du``, ``fs-point``): one pass over **every** U x I cell,
  generated lazily per batch; FS-Point adds one supplement per cell.

The epoch loop (early stopping on ``selection-metric`` with ``patience``, test at the best
validation epoch, ``results.json`` / ``rounds.jsonl``) is
:func:`florec.sim.central_loop.fit_and_select`, shared with :func:`florec.sim.central.run_central`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from florec.models import fair_losses as fl
from florec.models.mf import MF
from florec.recdata.errors import ConfigError
from florec.recdata.fair_sampling import (
    TrainIndex,
    cell_batches,
    fs_point_supplements,
    pair_partners,
)
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, torch_seed
from florec.recdata.store import get_split
from florec.sim.central import evaluate_model
from florec.sim.central_loop import fit_and_select


class FairTrainer:
    """One epoch of ``loss`` over an MF model's user and item tables.

    Parameters
    ----------
    model : MF
        The model (its item bias is not trained and stays 0).
    index : TrainIndex
        The train matrix, on the model's device.
    loss : str
        One of :data:`florec.models.fair_losses.PAIR_LOSSES` +
        :data:`florec.models.fair_losses.POINT_LOSSES`.
    optimizer : torch.optim.Optimizer
        Over ``model.user_emb`` and ``model.item_emb``.
    gen : torch.Generator
        CPU generator of every random draw (shuffles, negatives, supplements).
    beta : float
        IPS exponent of UBPR / Rel-MF / DU.

    """

    def __init__(self, model: MF, index: TrainIndex, loss: str, optimizer: torch.optim.Optimizer,
                 gen: torch.Generator, beta: float = 0.5) -> None:
        self.model, self.index, self.loss, self.opt, self.gen = model, index, loss, optimizer, gen
        self.theta = fl.propensity(index.pop, beta)
        self.theta_neg = fl.negative_propensity(self.theta)
        rows = torch.repeat_interleave(torch.arange(index.n_users, device=index.device), index.deg)
        self.train_users, self.train_items = rows, index.keys % index.n_items

    def _s(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (self.model.user_emb[u] * self.model.item_emb[i]).sum(-1)

    def _step(self, loss: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()  # summed on the device: no synchronisation per step

    def pair_epoch(self, batch_size: int) -> dict[str, float]:
        """One pass over the shuffled train pairs; returns loss sum and dropped pairs."""
        dev = self.index.device
        order = torch.randperm(len(self.train_users), generator=self.gen).to(dev)
        total, dropped, terms = torch.zeros((), device=dev), 0, 0
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            u, i = self.train_users[b], self.train_items[b]
            if self.loss in ("cpr", "fs-pair"):
                partner, ok = pair_partners(self.index, u, i)
                dropped += int((~ok).sum())
                u, i, u2, i2 = u[ok], i[ok], u[partner[ok]], i[partner[ok]]
                if len(u) == 0:
                    continue
                args = (self._s(u, i), self._s(u, i2), self._s(u2, i2), self._s(u2, i))
                loss = fl.fs_pair_loss(*args) if self.loss == "fs-pair" else fl.cpr_loss(*args)
            elif self.loss == "ubpr":
                j = torch.randint(self.index.n_items, (len(u),), generator=self.gen).to(dev)
                y_j = self.index.contains(u, j).to(torch.float32)
                loss = fl.ubpr_loss(self._s(u, i), self._s(u, j), self.theta[i], self.theta[j],
                                    y_j)
            else:  # bpr: uniform negatives among the user's non-interacted items
                j = self.index.draw_negatives(u, self.gen)
                loss = fl.pair_loss(self._s(u, i), self._s(u, j))
            terms += len(u)
            total += self._step(loss)
        return {"train-loss": float(total) / max(terms, 1), "dropped-pairs": float(dropped)}

    def point_epoch(self, batch_size: int) -> dict[str, float]:
        """One pass over every U x I cell (FS-Point adds supplements); returns loss sums."""
        idx = self.index
        total, skipped, cells = torch.zeros((), device=idx.device), 0.0, 0
        for u, i in cell_batches(idx.n_users, idx.n_items, batch_size, self.gen, idx.device):
            y = idx.contains(u, i).to(torch.float32)
            logits = self._s(u, i)
            if self.loss == "wmf":
                loss = fl.wmf_loss(logits, y)
            elif self.loss == "relmf":
                loss = fl.relmf_loss(logits, y, self.theta[i])
            elif self.loss == "du":
                loss = fl.du_loss(logits, y, self.theta[i], self.theta_neg[i])
            else:  # fs-point
                u2, i2, y2, keep = fs_point_supplements(idx, i, y, self.gen, drop=False)
                skipped = skipped + (1 - keep).sum()
                loss = fl.wmf_loss(logits, y) + fl.weighted_point_loss(self._s(u2, i2), y2, keep)
            cells += len(u)
            total += self._step(loss)
        return {"train-loss": float(total) / max(cells, 1), "skipped-supplements": float(skipped)}

    def epoch(self, batch_size: int) -> dict[str, float]:
        """One epoch of the configured loss."""
        if self.loss in fl.POINT_LOSSES:
            return self.point_epoch(batch_size)
        return self.pair_epoch(batch_size)


def fair_mf(cfg: RunConfig, index: TrainIndex, device: str = "cpu") -> tuple[MF, FairTrainer]:
    """A fresh MF and its :class:`FairTrainer` for ``cfg.mf_loss``, as every fair-loss run builds.

    MF of ``cfg.dim`` (seeded by ``cfg.seed``, init N(0, ``cfg.init_std``)) with its item bias
    frozen at 0; ``cfg.optimizer`` (Adam or SGD) over the user and item tables with ``cfg.lr`` and
    coupled ``cfg.weight_decay``; the trainer's generator seeded from ``cfg.seed``
    (``Salt.CENTRAL_FAIR``).

    Parameters
    ----------
    cfg : RunConfig
        Reads ``dim``, ``seed``, ``init_std``, ``optimizer``, ``lr``, ``weight_decay``,
        ``mf_loss`` and ``ips_beta``.
    index : TrainIndex
        The train matrix, on ``device``; it sets the tables' sizes.
    device : str
        Where the model lives.

    Returns
    -------
    tuple of (MF, FairTrainer)

    """
    model = MF(index.n_users, index.n_items, dim=cfg.dim, seed=cfg.seed,
               init_std=cfg.init_std).to(device)
    model.item_bias.requires_grad_(False)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    optimizer = opt_cls([model.user_emb, model.item_emb], lr=cfg.lr,
                        weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(torch_seed(cfg.seed, Salt.CENTRAL_FAIR))
    return model, FairTrainer(model, index, cfg.mf_loss, optimizer, gen, cfg.ips_beta)


def run_central_fair(cfg: RunConfig, epochs: int, batch_size: int, out_dir: Path | None = None,
                     device: str = "cpu", time_budget_s: float | None = None) -> dict[str, Any]:
    """Train MF centrally with ``cfg.mf_loss``; test at the best validation epoch.

    ``time_budget_s`` (optional, for benchmarks on shared machines) ends training after the
    first epoch that finishes past the budget; the run then records ``"stopped": "time-budget"``
    and ``rounds`` says how many epochs ran.

    Returns
    -------
    dict
        The run's entry of ``results.json`` (method ``mf-<loss>``); the folder is written if
        ``out_dir`` is given.

    Raises
    ------
    ConfigError
        If the model is not ``mf`` or the loss is unknown.

    """
    if cfg.model != "mf":
        raise ConfigError(f"mf-loss={cfg.mf_loss} needs model 'mf', got '{cfg.model}'; "
                          "set -c model=mf or mf-loss=bpr")
    if cfg.mf_loss not in fl.PAIR_LOSSES + fl.POINT_LOSSES:
        raise ConfigError(f"mf-loss '{cfg.mf_loss}' is unknown; use one of "
                          f"{', '.join(fl.PAIR_LOSSES + fl.POINT_LOSSES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    torch.manual_seed(cfg.seed)
    model, trainer = fair_mf(cfg, TrainIndex.from_csr(split.matrix("train"), device), device)
    return fit_and_select(
        cfg, f"mf-{cfg.mf_loss}", epochs,
        train_epoch=lambda: trainer.epoch(batch_size),
        validate=lambda: evaluate_model(model, split, "valid", cfg.k_list, cfg.eval_chunk, device),
        test=lambda: evaluate_model(model, split, "test", cfg.k_list, cfg.eval_chunk, device),
        out_dir=out_dir,
        config=cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size, "setting": "central"},
        time_budget_s=time_budget_s, t_start=t_start, model=model)
