r"""LLMD4Rec's distillation terms over a sample's K candidates (llmd4rec.md §2).

Every teacher hands over its distribution :math:`p` over the K candidates at temperature 1; the
tempered distribution of a teacher is :math:`p^T = \mathrm{softmax}(\log p / T)` (the same as
dividing the teacher's logits by T), that of a student with candidate logits :math:`z` is
:math:`q^T = \mathrm{softmax}(z / T)`. The distillation term of one sample is

.. math:: \ell_{KD} = T^2 \, \mathrm{KL}(p^T \,\|\, q^T)
          = T^2 \sum_{j=1}^{K} p^T_j (\log p^T_j - \log q^T_j),

with the teacher first and **detached** (no gradient reaches it) and the student second. Batch
losses weight it per sample, :math:`\frac{1}{B}\sum_b w_b \ell_{KD,b}`, with the weights of
:func:`sample_weights` (mean 1 over the batch, zero where the target is not a candidate).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from florec.recdata.errors import ConfigError

Weighting = Literal["truth", "argmax", "uniform"]
_EPS = 1e-12


def restricted_logits(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores of each row's candidates, ``(B, K)``, from all-item scores ``(B, n)``."""
    return torch.gather(scores, 1, candidates)


def tempered(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Teacher distribution at temperature T: :math:`\mathrm{softmax}(\log p / T)`, rows sum to 1.

    Raises
    ------
    ConfigError
        If ``temperature`` is not positive.

    """
    if temperature <= 0:
        raise ConfigError(f"llmd4rec-temperature={temperature} must be > 0; use e.g. 2")
    return torch.softmax(torch.log(probs.clamp_min(_EPS)) / temperature, dim=-1)


def distill_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
               temperature: float) -> torch.Tensor:
    r"""Per-sample :math:`T^2\,\mathrm{KL}(p^T \| q^T)` (module formula), shape ``(B,)``.

    Parameters
    ----------
    student_logits : torch.Tensor
        ``(B, K)`` student logits over the candidates (gradients flow).
    teacher_probs : torch.Tensor
        ``(B, K)`` teacher probabilities at temperature 1; detached here.
    temperature : float
        T > 0.

    Returns
    -------
    torch.Tensor
        ``(B,)`` non-negative terms; 0 where the tempered distributions are equal.

    """
    p = tempered(teacher_probs.detach().to(student_logits.dtype), temperature)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (p * (torch.log(p.clamp_min(_EPS)) - log_q)).sum(-1)
    return temperature ** 2 * kl


def sample_weights(teacher_probs: torch.Tensor, target_slot: torch.Tensor,
                   mode: Weighting = "truth") -> torch.Tensor:
    r"""Sample-wise adaptive weights, detached and normalised to mean 1 over the batch.

    Raw weights: ``truth`` :math:`w_b = p_{b,y_b}` (the teacher's probability of the ground
    truth); ``argmax`` :math:`w_b = 1[\arg\max_j p_{bj} = y_b] \max_j p_{bj}`; ``uniform``
    :math:`w_b = 1`. In every mode :math:`w_b = 0` when the target is not among the candidates
    (``target_slot < 0``). Then :math:`w_b \leftarrow w_b / \bar w` with :math:`\bar w` the batch
    mean; an all-zero batch keeps zeros.

    Raises
    ------
    ConfigError
        If ``mode`` is unknown.

    """
    p = teacher_probs.detach()
    inside = target_slot >= 0
    slot = target_slot.clamp_min(0).unsqueeze(1)
    truth = torch.gather(p, 1, slot).squeeze(1)
    if mode == "truth":
        raw = truth
    elif mode == "argmax":
        top, arg = p.max(dim=1)
        raw = top * (arg == target_slot)
    elif mode == "uniform":
        raw = torch.ones_like(truth)
    else:
        raise ConfigError(f"llmd4rec-weighting {mode!r} is unknown; use truth, argmax or uniform")
    raw = torch.where(inside, raw, torch.zeros_like(raw))
    mean = raw.mean()
    return raw / mean if mean > 0 else raw


def target_slots(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Column of each row's target among its candidates (-1 if absent)."""
    hit = np.asarray(candidates) == np.asarray(targets)[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1).astype(np.int64)


def candidate_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(S, K)`` candidate scores at temperature 1 (float64)."""
    z = np.asarray(scores, dtype=np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
