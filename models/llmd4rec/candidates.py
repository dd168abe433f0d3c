"""Distillation samples and the CRM's candidates over them (llmd4rec.md §2, step 2a).

A distillation sample is one training position of a user's train window (the sequential
recipe of :mod:`florec.recdata.sequences`): its input is the items before the position, its
target the item at it. ``llmd4rec-positions = n`` keeps each user's last ``n`` positions (0: every
position). The candidates are the CRM's top-K of the input, the input's own items masked
(they are the history; evaluation masks them the same way), so training candidates are built
from train prefixes only and never from validation or test items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from florec.models.llmd4rec.losses import candidate_softmax, target_slots
from florec.models.metrics import topk_items
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.sequences import PAD, past_samples, sample_positions


@dataclass
class DistillSet:
    """Samples with their CRM candidates (item ids ``0..n-1``, CRM rank order).

    Attributes
    ----------
    users : np.ndarray
        ``(S,)`` user of each sample.
    keys : np.ndarray
        ``(S,)`` position key of each sample (its window column; seeds its candidate shuffle).
    seqs : np.ndarray
        ``(S, L)`` left-padded input tokens (token = item + 1).
    targets : np.ndarray
        ``(S,)`` target item (-1 where unknown).
    candidates : np.ndarray
        ``(S, K)`` the CRM's top-K items, best first.
    crm_probs : np.ndarray
        ``(S, K)`` the CRM's softmax over the candidates at temperature 1.
    rows, cols : np.ndarray
        Window cell of each sample (training sets only; empty otherwise).

    """

    users: np.ndarray
    keys: np.ndarray
    seqs: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray
    crm_probs: np.ndarray
    rows: np.ndarray
    cols: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    @property
    def target_slot(self) -> np.ndarray:
        """Column of the target among the candidates (-1 if absent)."""
        return target_slots(self.candidates, self.targets)

    @property
    def covered(self) -> np.ndarray:
        """Whether each sample's target is among its candidates."""
        return self.target_slot >= 0

    def coverage(self) -> float:
        """Share of samples with a known target whose target is a candidate."""
        known = self.targets >= 0
        return float(self.covered[known].mean()) if known.any() else 0.0

    def subset(self, keep: np.ndarray) -> DistillSet:
        """The samples selected by a boolean mask or an index array."""
        def pick(a: np.ndarray) -> np.ndarray:
            return a[keep] if len(a) else a
        return DistillSet(*(pick(getattr(self, f)) for f in (
            "users", "keys", "seqs", "targets", "candidates", "crm_probs", "rows", "cols")))


def distill_positions(windows: np.ndarray, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each user's last ``last`` training positions (0: all of them)."""
    rows, cols = sample_positions(windows)
    if last > 0:
        keep = cols >= windows.shape[1] - last
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def crm_candidates(model: SequentialRecommender, seqs: np.ndarray, k: int,
                   mask: sp.csr_matrix | None = None, chunk: int = 1024,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items of each input and the CRM's softmax over them.

    The input's own items are masked (and ``mask`` rows, when given: evaluation masks).
    Returns ``(candidates (S, k), probs (S, k))``; the model is left in training mode.
    """
    model.eval()
    tops, probs = [], []
    with torch.no_grad():
        for s in range(0, len(seqs), chunk):
            seq = torch.as_tensor(seqs[s : s + chunk], dtype=torch.int64, device=device)
            scores = model.score(seq)
            rows, cols = torch.nonzero(seq != PAD, as_tuple=True)
            scores[rows, seq[rows, cols] - 1] = -torch.inf
            if mask is not None:
                m = mask[s : s + chunk].tocoo()
                scores[torch.as_tensor(m.row, dtype=torch.int64),
                       torch.as_tensor(m.col, dtype=torch.int64)] = -torch.inf
            top = topk_items(scores, k)
            tops.append(top.cpu().numpy())
            probs.append(candidate_softmax(torch.gather(scores, 1, top).cpu().numpy()))
    model.train()
    if not tops:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
    return np.concatenate(tops).astype(np.int64), np.concatenate(probs)


def training_set(model: SequentialRecommender, windows: np.ndarray, users: np.ndarray,
                 k: int, last: int = 0, chunk: int = 1024, device: str = "cpu") -> DistillSet:
    """Distillation samples of the train windows (rows = ``users``) with fresh CRM candidates."""
    rows, cols = distill_positions(windows, last)
    seqs, targets = past_samples(windows, rows, cols)
    cands, probs = crm_candidates(model, seqs, k, None, chunk, device)
    return DistillSet(np.asarray(users)[rows], cols.astype(np.int64), seqs, targets - 1, cands,
                      probs, rows, cols)


def evaluation_set(model: SequentialRecommender, inputs: np.ndarray, users: np.ndarray,
                   targets: np.ndarray, mask: sp.csr_matrix, k: int, chunk: int = 1024,
                   device: str = "cpu") -> DistillSet:
    """One sample per user for re-ranking: the split's input, its target and CRM top-K.

    ``mask`` is the split's evaluation mask (train items for validation, train + validation
    for test); ``targets`` the held-out item of each user (-1: not evaluated).
    """
    cands, probs = crm_candidates(model, inputs, k, mask, chunk, device)
    key = np.full(len(users), -1, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return DistillSet(np.asarray(users, dtype=np.int64), key, inputs,
                      np.asarray(targets, dtype=np.int64), cands, probs, empty, empty)
