"""One LLKD training loop for every selection rule, centrally or on a federated node.

Selection rules (run-config ``llkd-selection``), all trained on the teacher's pseudo-labels
``y_hat`` only:

* ``llkd``: ``keep = 1[c_T >= tau_T(y_hat)] 1[u_S >= tau_S(y_hat)]``, loss weighted by
  ``w ~ c_T u_S`` (:mod:`florec.models.llkd.selection`);
* ``teacher`` / ``student``: one of the two dynamic thresholds alone, unweighted;
* ``random``: a fixed seeded subset of the pool, unweighted;
* ``all``: every pseudo-label, unweighted (plain pseudo-label training).

Equal labelled budget: with ``budget = B`` the ``random`` subset has ``B`` samples and the
``teacher`` / ``student`` rules may add a sample they have never selected only while fewer than
``B`` distinct samples were selected, so none of them sees more distinct pseudo-labels than
LLKD did (``B`` = LLKD's count of samples ever selected).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from florec.models.llkd.selection import (
    ClassThresholds,
    keep_mask,
    llkd_weights,
    normalised_entropy,
    weighted_loss,
)
from florec.models.llkd.student import LinearStudent
from florec.recdata.seeds import Salt, stream

SELECTIONS = ("llkd", "all", "random", "teacher", "student")
#: Arrays of the federated global state: the head and the two threshold states.
HEAD = ("head.weight", "head.bias")
THRESHOLDS = ("tau-teacher", "tau-student")


@dataclass
class SelectionLog:
    """What a selection rule picked: samples ever selected and per-epoch, per-class counts."""

    ever: np.ndarray
    per_epoch: list[list[int]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def share_ever(self) -> float:
        """Share of the pool selected at least once."""
        return float(self.ever.mean()) if len(self.ever) else 0.0


class LLKDTrainer:
    """A student, its optimiser and both threshold EMAs over one pool of samples.

    Parameters
    ----------
    emb : np.ndarray
        ``(n, d)`` frozen embeddings of the pool.
    teacher : np.ndarray
        ``(n, C)`` teacher distributions ``p_T`` of the pool.
    selection : str
        One of :data:`SELECTIONS`.
    lr, weight_decay : float
        AdamW settings of the head.
    momentum : float
        EMA momentum ``lambda`` of both thresholds.
    budget : int
        Cap on distinct selected samples for ``random`` / ``teacher`` / ``student`` (0 = none).
    seed : int
        Seed of the head, the shuffles and the random subset.

    """

    def __init__(self, emb: np.ndarray, teacher: np.ndarray, selection: str = "llkd", *,
                 lr: float = 1e-2, weight_decay: float = 0.01, momentum: float = 0.999,
                 budget: int = 0, seed: int = 0) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"llkd-selection {selection!r} is unknown; choose one of "
                             f"{', '.join(SELECTIONS)}")
        self.emb = np.asarray(emb, np.float32)
        self.teacher = np.asarray(teacher, np.float64)
        self.n_classes = self.teacher.shape[1]
        self.pseudo, self.conf = self.teacher.argmax(1), self.teacher.max(1)
        self.selection, self.budget = selection, int(budget)
        self.student = LinearStudent(self.emb.shape[1], self.n_classes, seed)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=lr,
                                           weight_decay=weight_decay)
        self.tau_teacher = ClassThresholds(self.n_classes, momentum)
        self.tau_student = ClassThresholds(self.n_classes, momentum)
        self.rng = stream(seed, Salt.LLKD_TRAIN)
        self.log = SelectionLog(np.zeros(len(self.emb), bool))
        self.subset = np.ones(len(self.emb), bool)
        if selection == "random" and budget:
            self.subset = np.zeros(len(self.emb), bool)
            self.subset[self.rng.permutation(len(self.emb))[:budget]] = True
        self.round_stats = np.zeros(2 * (2 * self.n_classes + 2))

    def _keep(self, idx: np.ndarray, unc: np.ndarray, tau_t: np.ndarray,
              tau_s: np.ndarray) -> np.ndarray:
        pseudo, conf = self.pseudo[idx], self.conf[idx]
        zeros = np.zeros(self.n_classes)
        rule = {"llkd": (tau_t, tau_s), "teacher": (tau_t, zeros), "student": (zeros, tau_s)}
        if self.selection in rule:
            keep = keep_mask(conf, unc, pseudo, *rule[self.selection])
        elif self.selection == "random":
            keep = self.subset[idx].copy()
        else:
            keep = np.ones(len(idx), bool)
        if self.budget and self.selection in ("teacher", "student"):
            new = np.flatnonzero(keep & ~self.log.ever[idx])
            room = max(self.budget - int(self.log.ever.sum()), 0)
            keep[new[room:]] = False
        return keep

    def step(self, idx: np.ndarray) -> float:
        """One minibatch: student uncertainty, threshold EMAs, selection, weighted CE step."""
        unc = normalised_entropy(self.student.proba(self.emb[idx]))
        pseudo, conf = self.pseudo[idx], self.conf[idx]
        stats_t = ClassThresholds.batch_stats(conf, pseudo, self.n_classes)
        stats_s = ClassThresholds.batch_stats(unc, pseudo, self.n_classes)
        self.tau_teacher.update_stats(stats_t)
        self.tau_student.update_stats(stats_s)
        self.round_stats += np.concatenate([stats_t, stats_s])
        keep = self._keep(idx, unc, self.tau_teacher.thresholds(), self.tau_student.thresholds())
        weights = llkd_weights(conf, unc, keep) if self.selection == "llkd" else keep * 1.0
        self.log.ever[idx[keep]] = True
        self._epoch_counts += np.bincount(pseudo[keep], minlength=self.n_classes)
        if not keep.any():
            return 0.0
        logits = self.student(torch.as_tensor(self.emb[idx]))
        loss = weighted_loss(logits, torch.as_tensor(pseudo), torch.as_tensor(keep),
                             torch.as_tensor(weights, dtype=torch.float32))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def epoch(self, batch_size: int) -> float:
        """One shuffled pass over the pool; returns the mean batch loss."""
        self._epoch_counts = np.zeros(self.n_classes, np.int64)
        order = self.rng.permutation(len(self.emb))
        losses = [self.step(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]
        self.log.per_epoch.append(self._epoch_counts.tolist())
        self.log.losses.append(float(np.mean(losses)) if losses else 0.0)
        return self.log.losses[-1]

    def fit(self, epochs: int, batch_size: int) -> SelectionLog:
        """``epochs`` passes; returns the selection log."""
        for _ in range(epochs):
            self.epoch(batch_size)
        return self.log


def state_arrays(trainer: LLKDTrainer) -> dict[str, np.ndarray]:
    """What a node uploads and the server broadcasts: head weights and threshold states."""
    return trainer.student.state() | {
        "tau-teacher": trainer.tau_teacher.state().astype(np.float32),
        "tau-student": trainer.tau_student.state().astype(np.float32)}


def load_state(trainer: LLKDTrainer, arrays: dict[str, np.ndarray]) -> None:
    """Set the head and thresholds from :func:`state_arrays` output (those present)."""
    if all(k in arrays for k in HEAD):
        trainer.student.load({k: arrays[k] for k in HEAD})
    if all(k in arrays for k in THRESHOLDS):
        trainer.tau_teacher.load_state(arrays["tau-teacher"])
        trainer.tau_student.load_state(arrays["tau-student"])


def initial_state(n_classes: int, dim: int, momentum: float = 0.999, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """The seeded head and the thresholds' start ``mu = m(c) = 1/C`` (a federation's round 1)."""
    trainer = LLKDTrainer(np.zeros((1, dim), np.float32), np.full((1, n_classes), 1 / n_classes),
                          momentum=momentum, seed=seed)
    return state_arrays(trainer)
