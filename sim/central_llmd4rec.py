"""Centralised LLMD4Rec: pretrain SASRec (the CRM), then R rounds of mutual distillation.

Phases (llmd4rec.md §2; each timed, with the LLM's calls, cache hits and tokens, in
``results.json`` ``phases``):

1. ``pretrain``: SASRec on full-softmax CE, at most ``epochs`` epochs, early stop after
   ``llmd4rec-patience`` epochs without a better validation ndcg; the best epoch's weights are
   kept and its metrics are the run's ``baseline`` (plain SASRec, same seed);
2. for r = 1..R: ``candidates`` (the CRM's top-K of every distillation sample, its distribution
   cached), ``teacher-fit`` (the LLM's LoRA step on CE + KL toward the CRM), ``teacher-probs``
   (one cached pass of the teacher over the covered samples), ``crm`` (E epochs on CE + weighted
   KL toward the teacher, validated every epoch);
3. the deployed CRM is the best validation epoch of the distillation epochs (its test metrics are
   the run's ``metrics``); ``rerank`` adds the CRM's top-K re-ranked by the teacher.

After each LoRA step the teacher's adapter is written to ``<out-dir>/adapter`` (PEFT format), so
the LLM side of a finished or killed run is kept beside its results.

``--batch-size`` and ``lr`` are not used: the CRM trains with ``llmd4rec-crm-batch-size`` and
``llmd4rec-crm-lr`` (the spec's defaults table).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.client.trainers.sequential import resolve_device, sequence_metric_sums
from florec.models.cotrec.pipeline import PhaseLog, item_texts
from florec.models.cotrec.rank_eval import single_targets
from florec.models.llmd4rec.candidates import DistillSet, evaluation_set, training_set
from florec.models.llmd4rec.crm_step import TeacherTable, distill_epoch, rerank_metrics
from florec.models.llmd4rec.llm_step import PROMPT_VERSION
from florec.models.llmd4rec.teachers import EnsembleTeacher, Teacher, build_llm_teacher
from florec.models.metrics import split_metrics
from florec.models.registry import sequential_from_config
from florec.models.seq_layers import SequentialRecommender
from florec.recdata.recbole_io import data_notes
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.sequences import UserSequences
from florec.recdata.store import get_split
from florec.server.results import ResultsWriter, run_entry

Metrics = dict[str, float]


def llmd4rec_method_name(cfg: RunConfig) -> str:
    """``llmd4rec-<teacher>``: ``llm-<backend>`` (``scripted-p<p>``) or ``ensemble<n>``."""
    if cfg.llmd4rec_teacher == "ensemble":
        return f"llmd4rec-ensemble{cfg.llmd4rec_ensemble_size}"
    if cfg.llm_backend == "scripted":
        return f"llmd4rec-scripted-p{cfg.scripted_p:g}"
    return f"llmd4rec-llm-{cfg.llm_backend}"


def build_crm(cfg: RunConfig, n_items: int, seed: int | None = None) -> SequentialRecommender:
    """Plain SASRec of ``cfg``, weights from ``seed`` (default ``cfg.seed``).

    It is the model ``model='sasrec'`` builds, so the pretrained CRM is FloRec's SASRec baseline.
    """
    update = {"model": "sasrec", "oracle": False} | ({} if seed is None else {"seed": seed})
    return sequential_from_config(cfg.model_copy(update=update), n_items)


def pretrain(cfg: RunConfig, model: SequentialRecommender, windows: np.ndarray, epochs: int,
             validate: Callable[[], Metrics], seed: int, device: str = "cpu",
             on_epoch: Callable[[dict[str, Any]], None] | None = None
             ) -> tuple[dict[str, Any], int, int]:
    """Train the CRM on CE alone with early stopping; load and return its best state.

    Returns
    -------
    (state_dict, best_epoch, epochs_run)
        ``best_epoch`` is 0 when no epoch ran (``epochs`` = 0).

    """
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.llmd4rec_crm_lr)
    rng = stream(seed, Salt.CENTRAL_SEQUENCE)
    torch.manual_seed(seed)  # dropout, as a central SASRec run
    best_score, best_epoch, since, epoch = -np.inf, 0, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        stats = distill_epoch(model, optimizer, windows, rng, cfg.llmd4rec_crm_batch_size,
                              None, 0.0, cfg.llmd4rec_temperature, device=device)
        valid = validate()
        score = valid[cfg.selection_metric]
        if score > best_score:
            best_score, best_epoch, since = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
        if on_epoch is not None:
            on_epoch({"round": epoch, "phase": "pretrain", "train": stats.means(),
                      "valid": valid, "seconds": time.perf_counter() - t0})
        if cfg.llmd4rec_patience and since >= cfg.llmd4rec_patience:
            break
    model.load_state_dict(best_state)
    return best_state, best_epoch, epoch


def make_teacher(cfg: RunConfig, texts: list[str], n_items: int, windows: np.ndarray,
                 validate_of: Callable[[SequentialRecommender], Callable[[], Metrics]],
                 epochs: int, device: str = "cpu") -> Teacher:
    """The run's teacher: the LLM of ``llm-*`` or an ensemble of SASRecs pretrained here.

    Ensemble members use seeds ``seed + 1 .. seed + n`` (never the student's own).
    """
    if cfg.llmd4rec_teacher == "llm":
        return build_llm_teacher(cfg, texts)
    members = []
    for j in range(1, cfg.llmd4rec_ensemble_size + 1):
        member = build_crm(cfg, n_items, cfg.seed + j).to(device)
        pretrain(cfg, member, windows, epochs, validate_of(member), cfg.seed + j, device)
        members.append(member)
    return EnsembleTeacher(members, cfg.eval_chunk, device)


def candidate_top1(model: SequentialRecommender, ds: DistillSet, device: str = "cpu") -> float:
    """Share of covered samples whose target the CRM ranks first among the candidates."""
    cov = ds.subset(ds.covered)
    if not len(cov):
        return 0.0
    model.eval()
    with torch.no_grad():
        z = model.score(torch.as_tensor(cov.seqs, dtype=torch.int64, device=device))
        z = torch.gather(z, 1, torch.as_tensor(cov.candidates, device=device)).cpu().numpy()
    model.train()
    return float((z.argmax(1) == cov.target_slot).mean())


def run_central_llmd4rec(cfg: RunConfig, epochs: int, batch_size: int,
                         out_dir: Path | None = None, device: str = "cpu",
                         teacher: Teacher | None = None,
                         crm_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """One centralised LLMD4Rec run; returns its entry of ``results.json``.

    Parameters
    ----------
    cfg : RunConfig
        ``model='llmd4rec'``, ``llmd4rec-*``, ``llm-*`` and SASRec knobs.
    epochs : int
        Pretraining epoch cap (early stop after ``llmd4rec-patience``).
    batch_size : int
        Unused (``llmd4rec-crm-batch-size`` sets the CRM's minibatches); kept for the CLI.
    out_dir : Path, optional
        Results folder (config.json, rounds.jsonl, results.json).
    device : str
        ``cpu`` defers to ``cfg.device``.
    teacher : Teacher, optional
        A prebuilt teacher (benchmarks share one ensemble); default from the run config.
    crm_state : dict, optional
        A pretrained CRM state (skips pretraining; benchmarks share one per seed).

    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device) if device == "cpu" else device
    split, split_path = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                                  cfg.min_rating, cfg.synthetic_params())
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    windows = seqs.inputs(users, "train", cfg.max_seq_len)
    inputs = {p: seqs.inputs(users, p, cfg.max_seq_len) for p in ("valid", "test")}
    masks = {p: split.mask_for(p) for p in ("valid", "test")}
    truths = {p: split.matrix(p) for p in ("valid", "test")}
    log = PhaseLog()
    config = cfg.to_flower() | {"epochs": epochs, "setting": "central", "device-used": device,
                                "prompt-version": PROMPT_VERSION}
    writer = ResultsWriter(Path(out_dir)) if out_dir is not None else None
    if writer:
        writer.write_config(config)

    def evaluator(m: SequentialRecommender, part: str) -> Callable[[], Metrics]:
        return lambda: split_metrics(sequence_metric_sums(
            m, inputs, masks, truths, cfg.k_list, cfg.eval_chunk, device, parts=(part,)), part)

    def record(row: dict[str, Any]) -> None:
        if writer:
            writer.append_round(row)

    model = build_crm(cfg, split.n_items).to(device)
    with log.phase("pretrain"):
        if crm_state is None:
            _, base_epoch, ran = pretrain(cfg, model, windows, epochs, evaluator(model, "valid"),
                                     cfg.seed, device, record)
        else:
            model.load_state_dict(crm_state)
            base_epoch = ran = 0
    run = run_entry(llmd4rec_method_name(cfg), "central", cfg.dataset, cfg.split, cfg.seed,
                    **data_notes(cfg))
    run["baseline"] = {"method": "sasrec", "best_round": base_epoch,
                       "valid_metrics": evaluator(model, "valid")(),
                       "metrics": evaluator(model, "test")()}
    texts = item_texts(cfg, split_path, split.n_items)
    if teacher is None:
        with log.phase("teacher-build"):
            teacher = make_teacher(cfg, texts, split.n_items, windows,
                                   lambda m: evaluator(m, "valid"), epochs, device)
    llm = getattr(teacher, "llm", None)
    run.update(distill(cfg, model, teacher, windows, users, evaluator, log, record, device,
                       first_epoch=ran + 1,
                       adapter_dir=Path(out_dir) / "adapter" if out_dir is not None else None))
    if cfg.llmd4rec_rerank and cfg.llmd4rec_iterations:
        with log.phase("rerank", llm):
            ds = evaluation_set(model, inputs["test"], users, single_targets(truths["test"],
                                                                             users),
                                masks["test"], cfg.llmd4rec_candidates, cfg.eval_chunk, device)
            run["rerank"] = rerank_metrics(ds, teacher.probs(ds), cfg.llmd4rec_candidates)
    run.update(phases=log.phases, llm=llm.stats.as_dict() if llm is not None else {},
               teacher=teacher.name, wall_s=time.perf_counter() - t_start)
    if writer:
        writer.write_results(config, [run])
        writer.close()
    return run


def distill(cfg: RunConfig, model: SequentialRecommender, teacher: Teacher,
            windows: np.ndarray, users: np.ndarray,
            evaluator: Callable[[SequentialRecommender, str], Callable[[], Metrics]],
            log: PhaseLog, record: Callable[[dict[str, Any]], None], device: str = "cpu",
            first_epoch: int = 1, adapter_dir: Path | None = None) -> dict[str, Any]:
    """The R distillation iterations from the pretrained ``model``; returns run-entry fields.

    The model ends with the weights of its best validation epoch among the distillation
    epochs (with R = 0: as given, and the run's metrics are the given model's). Each LoRA step
    that trained writes the teacher's adapter to ``adapter_dir`` (``adapter`` in the entry).
    """
    llm = getattr(teacher, "llm", None)
    validate, test = evaluator(model, "valid"), evaluator(model, "test")
    out: dict[str, Any] = {"iterations": []}
    best, best_state, epoch = -np.inf, None, first_epoch - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.llmd4rec_crm_lr)
    for it in range(1, cfg.llmd4rec_iterations + 1):
        with log.phase("candidates"):
            ds = training_set(model, windows, users, cfg.llmd4rec_candidates,
                              cfg.llmd4rec_positions, cfg.eval_chunk, device)
        with log.phase("teacher-fit", llm):
            fit = teacher.fit(ds, it)
        if adapter_dir is not None and llm is not None and "skipped" not in fit:
            llm.save_adapter(adapter_dir)
            out["adapter"] = adapter_dir.name
        with log.phase("teacher-probs", llm):
            probs = teacher.probs(ds)
        cov = ds.covered
        slot = ds.target_slot[cov]
        out["iterations"].append({
            "iteration": it, "samples": len(ds), "coverage": ds.coverage(),
            "teacher_top1": float((probs[cov].argmax(1) == slot).mean()) if cov.any() else 0.0,
            "crm_top1": float((slot == 0).mean()) if cov.any() else 0.0,
            "fit": {k: v for k, v in fit.items() if isinstance(v, (int, float, str))}})
        table = TeacherTable.of(ds, probs, windows.shape)
        torch.manual_seed(torch_seed(cfg.seed, Salt.LLMD4REC_CRM_DROPOUT, it))
        for e in range(1, cfg.llmd4rec_crm_epochs + 1):
            t0 = time.perf_counter()
            epoch += 1
            with log.phase("crm"):
                stats = distill_epoch(model, optimizer, windows,
                                      stream(cfg.seed, Salt.LLMD4REC_CRM, it, e),
                                      cfg.llmd4rec_crm_batch_size, table,
                                      cfg.llmd4rec_lambda_crm, cfg.llmd4rec_temperature,
                                      cfg.llmd4rec_weighting, device)
                valid = validate()
            if valid[cfg.selection_metric] > best:
                best, best_state = valid[cfg.selection_metric], copy.deepcopy(model.state_dict())
                out.update(best_round=epoch, valid_metrics=valid, metrics=test())
            record({"round": epoch, "phase": f"distill-{it}", "train": stats.means(),
                    "valid": valid, "seconds": time.perf_counter() - t0})
    if out["iterations"]:  # the CRM's top-1 on the last samples' candidates, after training
        out["iterations"][-1]["crm_top1_after"] = candidate_top1(model, ds, device)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        out.update(best_round=first_epoch - 1, valid_metrics=validate(), metrics=test())
    out["rounds"] = epoch
    return out
