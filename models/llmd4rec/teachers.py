"""The teachers the CRM distils from, behind one interface (llmd4rec.md §2 and positive controls).

A :class:`Teacher` sees a :class:`~florec.models.llmd4rec.candidates.DistillSet` and

* ``fit(ds)``: learns from the CRM (the LLM's LoRA step on CE + KL toward the CRM); a fixed
  teacher returns ``{"skipped": reason}``;
* ``probs(ds)``: its distribution over each sample's K candidates at temperature 1, ``(S, K)`` in
  the CRM's candidate order. Samples whose target is not a candidate get a uniform row (their
  distillation weight is 0), so the LLM is asked only about covered samples.

Three teachers go through the same path:

* :class:`LLMTeacher`: the LLM letter ranker (``hf``/``tiny``/``openai``; cached calls);
* :class:`LLMTeacher` over the ``scripted`` backend with
  :func:`florec.models.llm.scripted.pick_target_rule`: knows the true next item with probability
  ``scripted-p`` (the positive control of known quality);
* :class:`EnsembleTeacher`: the mean candidate distribution of several independently trained
  SASRecs (a teacher of known benefit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from florec.models.cotrec.prompts import SYSTEM
from florec.models.cotrec.rank_eval import AnswerBook
from florec.models.llmd4rec.candidates import DistillSet
from florec.models.llmd4rec.llm_step import (
    build_prompts,
    finetune_distill,
    lora_seeds,
    slot_orders,
)
from florec.models.llmd4rec.losses import candidate_softmax
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.runconfig import RunConfig


class Teacher(Protocol):
    """What the distillation loop needs of a teacher (module docstring)."""

    name: str

    def fit(self, ds: DistillSet, iteration: int, pid: int | None = None) -> dict[str, Any]:
        """Learn from the CRM on ``ds`` (may be a no-op); ``pid``: a node's id, None centrally."""

    def probs(self, ds: DistillSet) -> np.ndarray:
        """``(S, K)`` distribution over the candidates, CRM order, temperature 1."""


class EnsembleTeacher:
    """Mean over ``models`` of each one's softmax over the candidates (fixed: no ``fit``)."""

    def __init__(self, models: Sequence[SequentialRecommender], chunk: int = 1024,
                 device: str = "cpu") -> None:
        self.models, self.chunk, self.device = list(models), chunk, device
        self.name = f"ensemble{len(self.models)}"

    def fit(self, ds: DistillSet, iteration: int, pid: int | None = None) -> dict[str, Any]:
        """Nothing to learn: the ensemble is trained before distillation."""
        return {"skipped": "fixed teacher"}

    def probs(self, ds: DistillSet) -> np.ndarray:
        """Average of the members' candidate softmaxes."""
        out = np.zeros(ds.candidates.shape)
        for model in self.models:
            model.eval()
            with torch.no_grad():
                for s in range(0, len(ds), self.chunk):
                    seq = torch.as_tensor(ds.seqs[s : s + self.chunk], dtype=torch.int64,
                                          device=self.device)
                    cand = torch.as_tensor(ds.candidates[s : s + self.chunk], device=self.device)
                    z = torch.gather(model.score(seq), 1, cand).cpu().numpy()
                    out[s : s + self.chunk] += candidate_softmax(z)
        return out / max(len(self.models), 1)


class LLMTeacher:
    """The LLM letter ranker over a sample's candidates (module docstring).

    Parameters
    ----------
    llm : LLM
        Backend from :func:`florec.models.llm.factory.build_llm` (cached).
    cfg : RunConfig
        ``llmd4rec-*`` knobs (history, augment, LoRA, temperature, lambda-llm, weighting).
    texts : sequence of str
        Public text of each item id.
    book : AnswerBook, optional
        Filled with the target slot of every prompt (the scripted oracle reads it).

    """

    def __init__(self, llm: Any, cfg: RunConfig, texts: Sequence[str],
                 book: AnswerBook | None = None) -> None:
        self.llm, self.cfg, self.texts = llm, cfg, texts
        self.book = book if book is not None else AnswerBook()
        self.name = f"llm:{getattr(llm, 'key', '')}"

    def _prompts(self, ds: DistillSet) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Prompts of the covered samples, their slot orders and target slots (registered)."""
        cov = ds.subset(ds.covered)
        k = ds.candidates.shape[1]
        slots = slot_orders(cov.users, cov.keys, k, self.cfg.seed, self.cfg.llmd4rec_augment)
        prompts = build_prompts(cov.seqs, cov.candidates, slots, self.texts,
                                self.cfg.llmd4rec_history, self.cfg.llmd4rec_augment)
        target = np.argmax(slots == cov.target_slot[:, None], axis=1)
        self.book.slots.update(zip(prompts, target.tolist(), strict=True))
        return prompts, slots, target

    def fit(self, ds: DistillSet, iteration: int, pid: int | None = None) -> dict[str, Any]:
        """One LoRA step on CE + KL toward the CRM over the covered samples (``skipped`` else).

        Seeds: :func:`~florec.models.llmd4rec.llm_step.lora_seeds` of (``seed``, ``iteration``,
        ``pid``): ``pid`` is None centrally, a node's partition id on a node.
        """
        cfg = self.cfg
        if cfg.llmd4rec_llm_epochs == 0:
            return {"skipped": "llmd4rec-llm-epochs=0"}
        prompts, slots, target = self._prompts(ds)
        if not prompts:
            return {"skipped": "no covered sample"}
        crm = np.take_along_axis(ds.crm_probs[ds.covered], slots, axis=1)
        init, order = lora_seeds(cfg.seed, iteration, pid)
        try:
            return finetune_distill(
                self.llm, prompts, target.tolist(), crm, temperature=cfg.llmd4rec_temperature,
                lam=cfg.llmd4rec_lambda_llm, weighting=cfg.llmd4rec_weighting,
                epochs=cfg.llmd4rec_llm_epochs, lr=cfg.llmd4rec_lora_lr,
                lora_r=cfg.llmd4rec_lora_r, lora_alpha=cfg.llmd4rec_lora_alpha,
                batch_size=cfg.llmd4rec_lora_batch_size, seed=order, init_seed=init)
        except NotImplementedError as err:
            return {"skipped": str(err), "n": len(prompts)}

    def probs(self, ds: DistillSet) -> np.ndarray:
        """The letter distribution of each covered sample, mapped back to CRM order."""
        k = ds.candidates.shape[1]
        out = np.full(ds.candidates.shape, 1.0 / k)
        prompts, slots, _ = self._prompts(ds)
        if prompts:
            letters = self.llm.choice_distribution(prompts, k, system=SYSTEM,
                                                   desc="llmd4rec teacher")
            crm_order = np.zeros_like(letters)
            np.put_along_axis(crm_order, slots, letters, axis=1)
            out[ds.covered] = crm_order
        return out


def build_llm_teacher(cfg: RunConfig, texts: Sequence[str], llm: Any = None) -> LLMTeacher:
    """The LLM teacher of the ``llm-*`` keys; ``scripted`` becomes the target-knowing oracle.

    The scripted rule reads the teacher's own :class:`AnswerBook`, so it knows only the targets
    of prompts this teacher built (on a node: that node's samples).
    """
    book = AnswerBook()
    if llm is None:
        from florec.models.llm.config import LLMConfig
        from florec.models.llm.factory import build_llm
        from florec.models.llm.scripted import pick_target_rule

        llm_cfg = LLMConfig.from_run_config(cfg)
        scripted = llm_cfg.backend == "scripted"
        llm = build_llm(llm_cfg, scripted_rule=pick_target_rule(book, llm_cfg.scripted_p)
                        if scripted else None,
                        scripted_name=f"llmd4rec-target-p{llm_cfg.scripted_p:g}"
                        if scripted else None)
    return LLMTeacher(llm, cfg, texts, book)
