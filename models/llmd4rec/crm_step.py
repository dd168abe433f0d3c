r"""The CRM side of LLMD4Rec: SASRec epochs on CE + weighted KL toward the teacher, and re-ranking.

One epoch is FloRec's sequential recipe (every position of the train windows a full-softmax CE
sample, shuffled, minibatches of ``batch_size``). A position that is a distillation sample adds
the teacher's term (llmd4rec.md §2, step 2d):

.. math:: L_C = \frac{1}{B}\sum_{b} \mathrm{CE}(z_b, y_b)
          + \lambda_C \frac{1}{|D|}\sum_{b \in D} w_b \, T^2 \,
            \mathrm{KL}(p^T_{teacher,b} \,\|\, \mathrm{softmax}(z_{b,C_b}/T))

with :math:`D` the batch's distillation samples, :math:`z_{b,C_b}` the CRM's logits of the
sample's candidates and :math:`w` the weights of
:func:`florec.models.llmd4rec.losses.sample_weights` over :math:`D` (mean 1). With
:math:`\lambda_C = 0` an epoch is exactly :func:`florec.client.trainers.sequential.train_epoch`
(same random streams, same losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from florec.client.trainers.sequential import EpochStats
from florec.models.cotrec.ranker import ranked_metrics, rerank
from florec.models.llmd4rec.candidates import DistillSet
from florec.models.llmd4rec.losses import distill_kl, restricted_logits, sample_weights
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.sequences import past_samples, sample_positions


@dataclass
class TeacherTable:
    """The teacher's cached outputs per distillation sample, addressable by window cell.

    Attributes
    ----------
    index : np.ndarray
        ``(U, L)``: row of each window cell in the arrays below, -1 if not a distillation sample.
    candidates, probs : np.ndarray
        ``(S, K)`` candidates (CRM order) and the teacher's probabilities over them.
    target_slot : np.ndarray
        ``(S,)`` the target's candidate column (-1: not a candidate, weight 0).

    """

    index: np.ndarray
    candidates: np.ndarray
    probs: np.ndarray
    target_slot: np.ndarray

    @classmethod
    def of(cls, ds: DistillSet, probs: np.ndarray, window_shape: tuple[int, int]
           ) -> TeacherTable:
        """Index ``ds`` (a training set) by its window cells."""
        index = np.full(window_shape, -1, dtype=np.int64)
        index[ds.rows, ds.cols] = np.arange(len(ds))
        return cls(index, ds.candidates, np.asarray(probs, dtype=np.float32), ds.target_slot)


@dataclass
class DistillStats(EpochStats):
    """:class:`EpochStats` plus the distillation term's sums."""

    kd_sum: float = 0.0
    kd_samples: int = 0

    def means(self) -> dict[str, float]:
        """Per-position means, plus ``kd-loss`` per distillation sample."""
        return super().means() | {"kd-loss": self.kd_sum / max(self.kd_samples, 1),
                                  "kd-samples": float(self.kd_samples)}


def distill_epoch(model: SequentialRecommender, optimizer: torch.optim.Optimizer,
                  windows: np.ndarray, rng: np.random.Generator, batch_size: int,
                  table: TeacherTable | None, lam: float, temperature: float,
                  weighting: str = "truth", device: str = "cpu") -> DistillStats:
    """One shuffled pass of :math:`L_C` (module formula) over every position of ``windows``."""
    model.train()
    rows, cols = sample_positions(windows)
    order = rng.permutation(len(rows))
    rows, cols = rows[order], cols[order]
    stats = DistillStats(positions=len(rows))
    for s in range(0, len(rows), batch_size):
        r, c = rows[s : s + batch_size], cols[s : s + batch_size]
        seq, pos = past_samples(windows, r, c)
        seq_t = torch.as_tensor(seq, dtype=torch.int64, device=device)
        pos_t = torch.as_tensor(pos, dtype=torch.int64, device=device)
        optimizer.zero_grad()
        scores = model.score(seq_t)
        loss = F.cross_entropy(scores, pos_t - 1)
        stats.loss_sum += loss.item() * len(r)
        idx = table.index[r, c] if table is not None and lam > 0 else np.zeros(0, np.int64)
        sel = np.flatnonzero(idx >= 0)
        if len(sel):
            rows_d = idx[sel]
            cand = torch.as_tensor(table.candidates[rows_d], device=device)
            teach = torch.as_tensor(table.probs[rows_d], device=device)
            slot = torch.as_tensor(table.target_slot[rows_d], device=device)
            student = restricted_logits(scores[torch.as_tensor(sel, device=device)], cand)
            kd = distill_kl(student, teach, temperature)
            w = sample_weights(teach, slot, weighting)
            kd_loss = (w * kd).mean()
            loss = loss + lam * kd_loss
            stats.kd_sum += kd_loss.item() * len(sel)
            stats.kd_samples += len(sel)
        loss.backward()
        optimizer.step()
    return stats


def rerank_metrics(ds: DistillSet, probs: np.ndarray, k: int = 10) -> dict[str, float]:
    """NDCG/HR@k of the CRM's own order and after re-ranking by ``probs`` (one target per user).

    Over all users with a target (a user whose target is not a candidate keeps the CRM's miss),
    and ``covered/...`` over the covered users only (llmd4rec.md §4). Ties in ``probs`` keep the
    CRM order.
    """
    known = ds.targets >= 0
    slot = ds.target_slot
    cov = known & (slot >= 0)
    n, n_cov = int(known.sum()), int(cov.sum())
    crm_ranks = slot[cov] + 1
    order = rerank(probs[cov])
    new_ranks = 1 + np.argmax(order == slot[cov][:, None], axis=1) if n_cov else crm_ranks
    out = {f"crm/{m}": v for m, v in ranked_metrics(crm_ranks, n, k).items()}
    out |= {f"rerank/{m}": v for m, v in ranked_metrics(new_ranks, n, k).items()}
    out |= {f"covered/crm/{m}": v for m, v in ranked_metrics(crm_ranks, n_cov, k).items()}
    out |= {f"covered/rerank/{m}": v for m, v in ranked_metrics(new_ranks, n_cov, k).items()}
    return out | {"users": float(n), "coverage": n_cov / max(n, 1)}
