"""Centralised CoT-Rec: perception -> text-initialised SASRec retriever -> LLM ranker (+ LoRA).

Phases (each timed, with its LLM calls, cache hits and tokens, in ``results.json`` ``phases``):

1. ``item-perception`` and ``user-perception`` (``cotrec-init='cotrec'``; ``title`` embeds the raw
   text, ``random`` skips both), embeddings, PCA projection -> initial item rows / user tokens;
2. ``retriever``: SASRec trained as :mod:`florec.sim.central_seq` (test at the best validation
   epoch), its best-epoch weights kept for the ranker;
3. ``ranker-untuned``, ``ranker-lora-train``, ``ranker-lora``: the LLM re-ranks the top-10 of
   every user whose target is in it; MAPB on ``cotrec-mapb-users`` users; LoRA on validation
   targets only (:mod:`florec.models.cotrec.rank_eval`).

The retriever (2) and the LoRA adapter (3) are loaded from the stage cache when their inputs
are those of a stored run (``cotrec-stage-cache``, :mod:`florec.models.cotrec.stages`);
``results.json`` reports ``stage_cache`` (hit / miss / corrupt / off per stage) and
``stage_cache_hits``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.client.trainers.sequential import resolve_device, sequence_metric_sums
from florec.models.cotrec.pipeline import (
    PhaseLog,
    histories,
    item_side,
    item_texts,
    make_encoder,
    make_llm,
    user_side,
)
from florec.models.cotrec.prompts import PROMPT_VERSION
from florec.models.cotrec.rank_eval import (
    AnswerBook,
    RankInputs,
    evaluate_ranker,
    lora_samples,
    retriever_metrics,
    single_targets,
)
from florec.models.cotrec.ranker import K, prompt_builder, shuffled_slots
from florec.models.cotrec.retriever import build_retriever, top_k, train_epoch, with_users
from florec.models.cotrec.stages import cached_finetune, cached_retriever, retriever_key
from florec.models.metrics import split_metrics
from florec.models.stage_cache import StageCache
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream
from florec.recdata.sequences import UserSequences
from florec.recdata.store import get_split
from florec.server.results import ResultsWriter
from florec.sim.central_loop import fit_and_select

#: Prompts per LoRA step (the layer's ``finetune_choices`` default; part of the adapter's key).
LORA_BATCH = 4


def cotrec_method_name(cfg: RunConfig) -> str:
    """``cotrec-<init>``, plus ``-notoken`` without the user token (random-notoken = SASRec)."""
    return f"cotrec-{cfg.cotrec_init}" + ("" if cfg.cotrec_user_token else "-notoken")


def run_central_cotrec(cfg: RunConfig, epochs: int, batch_size: int,
                       out_dir: Path | None = None, device: str = "cpu",
                       llm: Any = None, encoder: Any = None, book: AnswerBook | None = None
                       ) -> dict[str, Any]:
    """One centralised CoT-Rec run; returns its entry of ``results.json``.

    Parameters
    ----------
    cfg : RunConfig
        Run config (``model='cotrec'``, ``cotrec-*``, ``llm-*``, ``encoder`` and SASRec knobs).
    epochs, batch_size : int
        Retriever epoch cap and training positions per minibatch.
    out_dir : Path, optional
        Results folder (config.json, rounds.jsonl, results.json, perception JSONL, adapter).
    device : str
        ``cpu`` defers to ``cfg.device``.
    llm, encoder : optional
        Prebuilt LLM / sentence encoder (tests); default from the run config.
    book : AnswerBook, optional
        Filled with every ranker prompt's target slot (a scripted ``llm`` built over it is the
        positive control); default a new one.

    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device) if device == "cpu" else device
    split, split_path = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                                  cfg.min_rating, cfg.synthetic_params())
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    log, book = PhaseLog(), book if book is not None else AnswerBook()
    llm = llm if llm is not None else make_llm(cfg, book)
    encoder = encoder if encoder is not None else make_encoder(cfg)
    texts = item_texts(cfg, split_path, split.n_items)
    hist_train = histories(seqs, users, "train", cfg.cotrec_history, texts)
    with log.phase("item-perception", llm):
        item_rows, projection, _ = item_side(cfg, llm, encoder, texts, out_dir)
    with log.phase("user-perception", llm):
        user_rows, prefs = user_side(cfg, llm, encoder, projection, users, hist_train, out_dir)

    torch.manual_seed(cfg.seed)  # dropout
    model = build_retriever(cfg, split.n_items, split.n_users, item_rows, user_rows).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = stream(cfg.seed, Salt.CENTRAL_SEQUENCE)
    windows = seqs.inputs(users, "train", cfg.max_seq_len)
    inputs = {p: with_users(model, users, seqs.inputs(users, p, cfg.max_seq_len))
              for p in ("valid", "test")}
    masks = {p: split.mask_for(p) for p in ("valid", "test")}
    truths = {p: split.matrix(p) for p in ("valid", "test")}
    best: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def evaluate(part: str) -> dict[str, float]:
        return split_metrics(sequence_metric_sums(model, inputs, masks, truths, cfg.k_list,
                                                  cfg.eval_chunk, device, parts=(part,)), part)

    def one_epoch() -> dict[str, float]:
        t0 = time.perf_counter()
        means = train_epoch(model, optimizer, windows, users, rng, batch_size, device).means()
        rows.append({"round": len(rows) + 1, "train": means,
                     "train_seconds": time.perf_counter() - t0})
        return means

    def validate() -> dict[str, float]:
        valid = evaluate("valid")
        if rows:
            rows[-1]["valid"] = valid
        return valid

    def test() -> dict[str, float]:
        best["state"] = copy.deepcopy(model.state_dict())  # test runs at each improvement
        return evaluate("test")

    def fit() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = fit_and_select(cfg, cotrec_method_name(cfg), epochs, train_epoch=one_epoch,
                             validate=validate, test=test, out_dir=out_dir, config=config,
                             t_start=t_start)
        if "state" in best:
            model.load_state_dict(best["state"])
        if out_dir is not None and rows:  # the lines fit_and_select wrote: seconds, memory
            rows[:] = written_rows(Path(out_dir), len(rows))
        return run, rows

    config = cfg.to_flower() | {"epochs": epochs, "batch-size": batch_size, "setting": "central",
                                "device-used": device, "prompt-version": PROMPT_VERSION}
    stages = StageCache(enabled=cfg.cotrec_stage_cache)
    key = retriever_key(cfg, split_path, {"windows": windows, **{
        f"{name}-{p}": table[p] for name, table in (("inputs", inputs), ("mask", masks),
                                                     ("truth", truths)) for p in table}},
        item_rows, user_rows, epochs, batch_size, device)
    with log.phase("retriever"):
        run, kept = cached_retriever(stages, key, model, fit)
        if stages.events.get("cotrec-retriever") == "hit" and out_dir is not None:
            replay_files(Path(out_dir), config, kept)
    if out_dir is not None and cfg.cotrec_ranker != "none":  # a kill in the ranker: unfinished
        ResultsWriter(Path(out_dir)).write_results(config, [run], status="running")
    if cfg.cotrec_ranker != "none":
        hist_test = histories(seqs, users, "test", cfg.cotrec_history, texts)
        prefs_of = prefs.__getitem__
        parts = {}
        for j, (part, hist) in enumerate((("valid", hist_train), ("test", hist_test))):
            parts[part] = RankInputs(
                users, top_k(model, inputs[part], masks[part], K, cfg.eval_chunk, device),
                single_targets(truths[part], users),
                prompt_builder(texts.__getitem__, hist.__getitem__, prefs_of),
                shuffled_slots(len(users), K, cfg.seed + j))
        run["ranker"] = run_ranker(cfg, llm, parts["valid"], parts["test"], log, book, out_dir,
                                   stages)
    run.update(phases=log.phases, llm=llm.stats.as_dict() if llm is not None else {},
               stage_cache=dict(stages.events), stage_cache_hits=stages.hits,
               wall_s=time.perf_counter() - t_start)
    if out_dir is not None:
        ResultsWriter(Path(out_dir)).write_results(config, [run])
    return run


def run_ranker(cfg: RunConfig, llm: Any, valid: RankInputs, test: RankInputs, log: PhaseLog,
               book: AnswerBook, out_dir: Path | None = None,
               stages: StageCache | None = None) -> dict[str, Any]:
    """Retriever vs untuned vs LoRA-tuned ranker on the test split (LoRA on validation only).

    The adapter is looked up in ``stages`` first (:func:`florec.models.cotrec.stages.
    cached_finetune`); without it, it is always trained.
    """
    out: dict[str, Any] = {"retriever": retriever_metrics(test)}
    with log.phase("ranker-untuned", llm):
        out["untuned"] = evaluate_ranker(llm, test, cfg.cotrec_mapb_users, "untuned", book)
    if cfg.cotrec_ranker != "lora":
        return out
    with log.phase("ranker-lora-train", llm):
        prompts, targets = lora_samples(valid, book)
        try:
            stats = cached_finetune(stages or StageCache(enabled=False), llm, prompts, targets,
                                    K, epochs=cfg.cotrec_lora_epochs, lr=cfg.cotrec_lora_lr,
                                    lora_r=cfg.cotrec_lora_r, batch_size=LORA_BATCH,
                                    seed=cfg.seed)
        except NotImplementedError as err:
            out["lora"] = {"skipped": str(err), "samples": len(prompts)}
            return out
    if out_dir is not None:
        llm.save_adapter(Path(out_dir) / "adapter")
    with log.phase("ranker-lora", llm):
        out["lora"] = evaluate_ranker(llm, test, cfg.cotrec_mapb_users, "lora", book)
    out["lora"].update(samples=len(prompts), train={k: v for k, v in stats.items()
                                                     if isinstance(v, (int, float))})
    return out


def replay_files(out_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``config.json`` and the stored ``rounds.jsonl`` lines of a retriever loaded from the cache.

    Each line is the trained run's as it stored it (train loss, validation metrics, the epoch's
    ``seconds`` and ``train_seconds``, its ``rss_peak_mb``/``rss_growth_mb``) marked
    ``"stage_cache": "hit"``; ``results.json`` is written when the run ends.
    """
    writer = ResultsWriter(out_dir)
    writer.write_config(config)
    with (Path(out_dir) / "rounds.jsonl").open("a") as fh:  # as stored: not this run's memory
        for row in rows:
            fh.write(json.dumps(dict(row, stage_cache="hit"), sort_keys=True, default=float)
                     + "\n")
    writer.close()


def written_rows(out_dir: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` lines of ``out_dir/rounds.jsonl``: what a retriever entry stores as rows.

    They are the epochs :func:`fit_and_select` wrote, with their ``seconds`` and memory fields.
    """
    lines = (Path(out_dir) / "rounds.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[-n:]]
