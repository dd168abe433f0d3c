"""Local training and evaluation of sequential models, shared by central and federated runs.

One epoch is a shuffled pass over every training position of the given windows
(:mod:`florec.recdata.sequences`). A plain backbone takes one Adam step per minibatch on its past
samples. Oracle4Rec takes the two-phase step of oracle4rec.md §2 (:func:`oracle_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.metrics import evaluate_users
from florec.models.oracle4rec import Oracle4Rec, oracle_optimizers
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.sequences import (
    future_samples,
    past_samples,
    sample_negatives,
    sample_positions,
)

OPT_PREFIX = "opt"


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` where a GPU is visible, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_optimizers(model: SequentialRecommender, lr: float, weight_decay: float = 0.0
                    ) -> list[torch.optim.Optimizer]:
    """One Adam for a backbone; (future, past) Adams sharing the embedding for Oracle4Rec.

    ``weight_decay`` is Adam's coupled L2 (``run-config`` ``weight-decay``; 0 in the
    Oracle4Rec code).
    """
    if isinstance(model, Oracle4Rec):
        return list(oracle_optimizers(model, lr, weight_decay))
    return [torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)]


@dataclass
class EpochStats:
    """Sums over one epoch's training positions (divide by ``positions`` for means)."""

    positions: int = 0
    loss_sum: float = 0.0
    future_loss_sum: float = 0.0
    guide_sum: float = 0.0

    def means(self) -> dict[str, float]:
        """Means per position: ``train-loss`` (past objective), ``future-loss``, ``og-loss``."""
        n = max(self.positions, 1)
        return {"train-loss": self.loss_sum / n, "future-loss": self.future_loss_sum / n,
                "og-loss": self.guide_sum / n, "positions": float(self.positions)}


def oracle_step(model: Oracle4Rec, opt_future: torch.optim.Optimizer,
                opt_past: torch.optim.Optimizer, past: tuple[torch.Tensor, ...],
                future: tuple[torch.Tensor, ...], kind: str) -> tuple[float, float, float]:
    """Oracle4Rec's 2PTraining on one minibatch.

    1. An Adam step of the future encoder (and the shared embedding) on its next-item loss.
    2. The future states recomputed with the updated encoder and detached; an Adam step of the
       past encoder (and the same shared embedding) on ``L_rec^past + alpha * L_og``.

    Returns
    -------
    (past objective, future loss, guiding loss) of the batch.

    """
    seq, pos, neg = past
    f_seq, f_tgt, f_neg = future
    opt_future.zero_grad()
    f_loss, _, _ = model.future_forward(f_seq, f_tgt, f_neg, kind)
    f_loss.backward()
    opt_future.step()
    with torch.no_grad():
        z_future, mask = model.future_states(f_seq, f_tgt)
    opt_past.zero_grad()
    loss, guide = model.past_objective(seq, pos, neg, z_future, mask, kind)
    loss.backward()
    opt_past.step()
    return loss.item(), f_loss.item(), guide.item()


def train_epoch(model: SequentialRecommender, optimizers: Sequence[torch.optim.Optimizer],
                windows: np.ndarray, n_items: int, rng: np.random.Generator, batch_size: int,
                kind: str = "ce", device: str = "cpu") -> EpochStats:
    """One shuffled pass over every position of ``windows`` (left-padded tokens, (U, L)).

    Negatives (for ``bpr``) avoid the sample's window items and are drawn per minibatch.
    """
    model.train()
    rows, cols = sample_positions(windows)
    order = rng.permutation(len(rows))
    rows, cols = rows[order], cols[order]
    stats = EpochStats(positions=len(rows))
    oracle = isinstance(model, Oracle4Rec)
    length = windows.shape[1]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64, device=device)

    for s in range(0, len(rows), batch_size):
        r, c = rows[s : s + batch_size], cols[s : s + batch_size]
        seq, pos = past_samples(windows, r, c)
        neg = (sample_negatives(windows, r, n_items, (len(r),), rng) if kind != "ce"
               else np.zeros_like(pos))
        past = (tensor(seq), tensor(pos), tensor(neg))
        if oracle:
            f_seq, f_tgt = future_samples(windows, r, c, model.future_len)
            f_neg = (sample_negatives(windows, r, n_items, (len(r), length), rng)
                     if kind != "ce" else np.zeros_like(f_tgt))
            loss, f_loss, guide = oracle_step(model, optimizers[0], optimizers[1], past,
                                              (tensor(f_seq), tensor(f_tgt), tensor(f_neg)), kind)
            stats.future_loss_sum += f_loss * len(r)
            stats.guide_sum += guide
        else:
            optimizers[0].zero_grad()
            batch_loss = model.loss(*past, kind=kind)
            batch_loss.backward()
            optimizers[0].step()
            loss = batch_loss.item()
        stats.loss_sum += loss * len(r)
    return stats


def sequence_metric_sums(model: SequentialRecommender, inputs: dict[str, np.ndarray],
                         masks: dict[str, sp.csr_matrix], truths: dict[str, sp.csr_matrix],
                         ks: list[int], chunk: int = 1024, device: str = "cpu",
                         parts: tuple[str, ...] = ("valid", "test")) -> dict[str, float]:
    """``<part>/<metric>`` full-ranking sums of rows ``0..U-1`` for each of ``parts``.

    ``inputs[part]`` holds each row's left-padded input for that part (validation: train items;
    test: train + validation items); ``masks``/``truths`` are the matching ``(U, n_items)``
    matrices (evaluation.md §2).
    """
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for part in parts:
            seq = torch.as_tensor(inputs[part], dtype=torch.int64, device=device)
            part_sums = evaluate_users(lambda u, seq=seq: model.score(seq[u]),
                                       np.arange(len(seq)), masks[part], truths[part], ks, chunk,
                                       device)
            sums.update({f"{part}/{k}": v for k, v in part_sums.items()})
    model.train()
    return sums


def optimizer_arrays(optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, np.ndarray]:
    """Adam moments and steps of every optimiser as flat numpy arrays (for a node's state)."""
    out = {}
    for j, opt in enumerate(optimizers):
        for idx, st in opt.state_dict()["state"].items():
            for key, val in st.items():
                out[f"{OPT_PREFIX}{j}.{idx}.{key}"] = torch.as_tensor(val).cpu().numpy().copy()
    return out


def load_optimizer_arrays(optimizers: Sequence[torch.optim.Optimizer],
                          arrays: dict[str, np.ndarray]) -> None:
    """Restore what :func:`optimizer_arrays` saved into freshly built optimisers."""
    for j, opt in enumerate(optimizers):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in arrays.items():
            head, idx, name = key.split(".", 2)
            if head == f"{OPT_PREFIX}{j}":
                t = torch.from_numpy(val.copy())
                state.setdefault(int(idx), {})[name] = t
        if state:
            sd = opt.state_dict()
            sd["state"] = state
            opt.load_state_dict(sd)
