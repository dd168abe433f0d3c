"""Centralised LLKD: teacher pass, gate, student training with a selection rule, gold metrics.

Phases (each timed with its LLM calls and cache hits in ``results.json`` ``phases``):

1. ``embed``: MiniLM embeddings of the item titles (cached on disk by text);
2. ``teacher``: the LLM's choice distribution over the class names for the training pool, then
   the gate (teacher beats the majority class; AUROC of its confidence > 0.6);
3. ``student``: the linear head trained on pseudo-labels with ``llkd-selection``; the rules
   other than ``llkd`` and ``all`` get LLKD's budget (``llkd-budget``, 0 = train LLKD first in
   the same run and use its count of samples ever selected).

Gold labels of the held-out items give accuracy and macro-F1; the pool's gold labels feed only
the gate. ``florec central --model llkd --epochs 10`` runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from florec.models.cotrec.pipeline import PhaseLog, encode_cached
from florec.models.llkd.student import accuracy_macro_f1
from florec.models.llkd.task import TextTask, class_counts, load_task, split_task
from florec.models.llkd.teacher import (
    PROMPT_VERSION,
    make_teacher,
    teacher_distribution,
    teacher_gate,
)
from florec.models.llkd.train import LLKDTrainer
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream


@dataclass
class Prepared:
    """Everything the selection rules share: task, pool / test items, embeddings, teacher."""

    task: TextTask
    pool: np.ndarray
    test: np.ndarray
    emb: np.ndarray  # (n_items, d), rows of pool and test filled
    teacher: np.ndarray  # (len(pool), C)
    gate: dict
    log: PhaseLog
    llm_stats: dict


def prepare(cfg: RunConfig, llm: Any = None, encoder: Any = None) -> Prepared:
    """Task, split of the labelled items, embeddings and the teacher pass with its gate."""
    log = PhaseLog()
    task = load_task(cfg)
    pool, test = split_task(task, cfg.llkd_test_fraction, cfg.split_seed)
    if cfg.llkd_teacher_items and cfg.llkd_teacher_items < len(pool):
        rng = stream(cfg.split_seed, Salt.LLKD_TEACHER_ITEMS)
        pool = np.sort(rng.choice(pool, cfg.llkd_teacher_items, replace=False))
    if encoder is None:
        from florec.models.llm.encoder import SentenceEncoder

        encoder = SentenceEncoder(cfg.encoder)
    both = np.union1d(pool, test)  # sorted: the nodes embed the same list (one cache entry)
    with log.phase("embed"):
        vectors = encode_cached(encoder, [task.inputs[i] for i in both])
        emb = np.zeros((len(task.inputs), vectors.shape[1]), np.float32)
        emb[both] = vectors
    llm = llm if llm is not None else make_teacher(cfg, task, pool)
    with log.phase("teacher", llm):
        probs = teacher_distribution(llm, [task.inputs[i] for i in pool], task.classes,
                                     task.noun)
    gate = teacher_gate(probs, task.gold[pool])
    return Prepared(task, pool, test, emb, probs, gate, log, llm.stats.as_dict())


def train_rule(prep: Prepared, cfg: RunConfig, selection: str, epochs: int,
               budget: int = 0) -> dict[str, Any]:
    """Train one student with ``selection``; its gold metrics and selection statistics."""
    t0 = time.perf_counter()
    trainer = LLKDTrainer(prep.emb[prep.pool], prep.teacher, selection, lr=cfg.llkd_lr,
                          momentum=cfg.llkd_ema, budget=budget, seed=cfg.seed)
    log = trainer.fit(epochs, cfg.llkd_batch_size)
    n_classes = len(prep.task.classes)
    pred = trainer.student.predict(prep.emb[prep.test])
    out = accuracy_macro_f1(pred, prep.task.gold[prep.test], n_classes)
    kept = prep.teacher.argmax(1)[log.ever]
    out.update(selection=selection, budget=budget, selected_ever=int(log.ever.sum()),
               share_ever=log.share_ever(),
               pseudo_accuracy_selected=float(
                   (kept == prep.task.gold[prep.pool][log.ever]).mean()) if len(kept) else 0.0,
               selected_per_epoch=log.per_epoch, train_loss=log.losses,
               tau_teacher=trainer.tau_teacher.thresholds().tolist(),
               tau_student=trainer.tau_student.thresholds().tolist(),
               seconds=time.perf_counter() - t0)
    out["trainer"] = trainer
    return out


def run_selection(prep: Prepared, cfg: RunConfig, selection: str, epochs: int
                  ) -> dict[str, Any]:
    """``selection`` at LLKD's budget (LLKD trained first when ``llkd-budget`` is 0)."""
    budget = cfg.llkd_budget
    if selection in ("random", "teacher", "student") and not budget:
        budget = train_rule(prep, cfg, "llkd", epochs)["selected_ever"]
    return train_rule(prep, cfg, selection, epochs, budget)


def run_central_llkd(cfg: RunConfig, epochs: int, out_dir: Path | None = None,
                     llm: Any = None, encoder: Any = None) -> dict[str, Any]:
    """One centralised LLKD run; returns its entry of ``results.json``.

    Parameters
    ----------
    cfg : RunConfig
        ``model='llkd'``, the ``llkd-*`` keys, ``llm-*`` (teacher), ``encoder`` (student).
    epochs : int
        Passes of the student over the pool (no model selection: no labelled dev set).
    out_dir : Path, optional
        Results folder (``config.json`` and ``results.json``).
    llm, encoder : optional
        Prebuilt teacher / encoder (tests).

    """
    from florec.server.results import ResultsWriter

    t_start = time.perf_counter()
    prep = prepare(cfg, llm, encoder)
    with prep.log.phase("student"):
        result = run_selection(prep, cfg, cfg.llkd_selection, epochs)
    result.pop("trainer")
    n_classes = len(prep.task.classes)
    run = {"method": f"llkd-{cfg.llkd_selection}", "setting": "central",
           "dataset": cfg.dataset, "seed": cfg.seed, "best_round": epochs,
           "metrics": {k: result[k] for k in ("accuracy", "macro-f1", "share_ever")},
           "selection": result,
           "gate": prep.gate, "classes": list(prep.task.classes),
           "pool": len(prep.pool), "test_items": len(prep.test),
           "pool_class_counts": class_counts(prep.task.gold[prep.pool], n_classes).tolist(),
           "phases": prep.log.phases, "llm": prep.llm_stats,
           "wall_s": time.perf_counter() - t_start, "status": "done"}
    run["minutes"] = run["wall_s"] / 60
    if out_dir is not None:
        config = cfg.to_flower() | {"epochs": epochs, "setting": "central",
                                    "prompt-version": PROMPT_VERSION}
        ResultsWriter(Path(out_dir)).write_results(config, [run])
    return run
