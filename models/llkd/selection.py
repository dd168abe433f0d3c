"""LLKD's sample selection: dynamic class-wise thresholds, the keep rule and the weighted loss.

Thresholds (FreeMatch-style self-adaptive thresholding, docs/methods/llkd.md), one set for the
teacher's confidence ``c_T`` and one for the student's uncertainty ``u_S``; with momentum
``lambda`` and each batch's values ``v`` (pseudo-labels ``y_hat``):

* ``mu_t = lambda mu_{t-1} + (1 - lambda) mean(v)``;
* ``m_t(c) = lambda m_{t-1}(c) + (1 - lambda) mean(v | y_hat = c)`` (unchanged for a class
  absent from the batch);
* ``tau_t(c) = mu_t m_t(c) / max_c' m_t(c')``, from ``mu_0 = m_0(c) = 1/C``.

A batch is summarised by ``2C + 2`` numbers (sum and count overall and per class,
:meth:`ClassThresholds.batch_stats`), which is what a federated node uploads: summing nodes'
statistics gives exactly the pooled batch's update.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class ClassThresholds:
    """EMA state ``(mu, m)`` of one signal and its class-wise thresholds ``tau``.

    Parameters
    ----------
    n_classes : int
        Number of classes ``C``.
    momentum : float
        EMA momentum ``lambda`` in [0, 1).

    """

    def __init__(self, n_classes: int, momentum: float = 0.999) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"llkd-ema={momentum} must be in [0, 1)")
        self.n_classes, self.momentum = n_classes, momentum
        self.mu = 1.0 / n_classes
        self.m = np.full(n_classes, 1.0 / n_classes)

    @staticmethod
    def batch_stats(values: np.ndarray, pseudo: np.ndarray, n_classes: int) -> np.ndarray:
        """``[sum v, n, sum v | c=0.., n_c=0..]``: the ``2C + 2`` sufficient statistics."""
        values = np.asarray(values, np.float64)
        pseudo = np.asarray(pseudo, np.int64)
        sums = np.bincount(pseudo, weights=values, minlength=n_classes)
        counts = np.bincount(pseudo, minlength=n_classes).astype(np.float64)
        return np.concatenate([[values.sum(), float(len(values))], sums, counts])

    def update_stats(self, stats: np.ndarray) -> None:
        """One EMA step from (possibly summed) batch statistics."""
        c = self.n_classes
        total, count = stats[0], stats[1]
        sums, counts = stats[2:2 + c], stats[2 + c:2 + 2 * c]
        lam = self.momentum
        if count > 0:
            self.mu = lam * self.mu + (1 - lam) * total / count
        seen = counts > 0
        self.m[seen] = lam * self.m[seen] + (1 - lam) * sums[seen] / counts[seen]

    def update(self, values: np.ndarray, pseudo: np.ndarray) -> None:
        """One EMA step from a batch of values and their pseudo-labels."""
        self.update_stats(self.batch_stats(values, pseudo, self.n_classes))

    def thresholds(self) -> np.ndarray:
        """``tau(c) = mu m(c) / max m``, shape ``(C,)``."""
        top = self.m.max()
        return self.mu * self.m / top if top > 0 else np.zeros(self.n_classes)

    def state(self) -> np.ndarray:
        """``[mu, m(0), .., m(C-1)]`` (what the server broadcasts)."""
        return np.concatenate([[self.mu], self.m])

    def load_state(self, state: np.ndarray) -> None:
        """Set ``(mu, m)`` from :meth:`state`."""
        self.mu, self.m = float(state[0]), np.asarray(state[1:], np.float64).copy()


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Student uncertainty ``u_S = H(p) / log C = -sum_c p_c log p_c / log C``, in [0, 1]."""
    probs = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return -(probs * np.log(probs)).sum(1) / np.log(probs.shape[1])


def keep_mask(conf: np.ndarray, unc: np.ndarray, pseudo: np.ndarray, tau_t: np.ndarray,
              tau_s: np.ndarray) -> np.ndarray:
    """``keep(x) = 1[c_T(x) >= tau_T(y_hat)] 1[u_S(x) >= tau_S(y_hat)]``."""
    return (np.asarray(conf) >= tau_t[pseudo]) & (np.asarray(unc) >= tau_s[pseudo])


def llkd_weights(conf: np.ndarray, unc: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``w(x) = c_T(x) u_S(x) / mean_{kept} (c_T u_S)`` on kept samples, 0 elsewhere (mean 1)."""
    raw = np.where(keep, np.asarray(conf, np.float64) * np.asarray(unc, np.float64), 0.0)
    mean = raw[keep].mean() if keep.any() else 0.0
    return raw / mean if mean > 0 else np.where(keep, 1.0, 0.0)


def weighted_loss(logits: torch.Tensor, pseudo: torch.Tensor, keep: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """``L_w = (1/|B|) sum_{x in B} keep(x) w(x) CE(p_S(.|x), y_hat(x))``."""
    ce = F.cross_entropy(logits, pseudo, reduction="none")
    return (keep.to(ce.dtype) * weights.to(ce.dtype) * ce).sum() / max(len(ce), 1)
