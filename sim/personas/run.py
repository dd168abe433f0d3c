"""``florec simulate``: one persona population against one or more recommenders, files and report.

Every recommender sees the same personas (written once, from the same seed) for the same number
of sessions, so their click-through and novelty compare pairwise. Personas stand for users
sampled from the first run's split (each sees exactly the list its anchor user would get), or,
with ``cold_start``, for new users whose history is seeded from their persona text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from florec.models.llm.base import LLM
from florec.models.llm.encoder import SentenceEncoder
from florec.recdata.errors import ConfigError
from florec.recdata.item_text import ItemText, item_text_string, load_item_text, split_item_ids
from florec.recdata.splits import Split
from florec.recdata.store import get_split
from florec.sim.central import item_popularity
from florec.sim.personas.output import report_markdown, summarize, write_recbole
from florec.sim.personas.persona import (
    PERSONA_SALT,
    Persona,
    sample_personas,
    seed_items,
    write_personas,
)
from florec.sim.personas.recommender import Ranker, TrainedRecommender, load_run
from florec.sim.personas.session import SessionOptions, simulate

COLD_START_ITEMS = 5


def noun_for(dataset: str, texts: list[ItemText]) -> str:
    """What a catalogue holds, for prompts: movies (MovieLens), products (Amazon) or items."""
    if dataset.startswith("ml-") or dataset.startswith("fedcia-ml"):
        return "movie"
    if texts and texts[0].genre_label == "Categories":
        return "product"
    return "item"


def make_personas(n: int, split: Split, texts: list[ItemText], llm: LLM,
                  encoder: SentenceEncoder, seed: int, noun: str,
                  cold_start: bool = False) -> tuple[list[Persona], dict[str, int]]:
    """Sample, write and (cold start) seed ``n`` personas.

    Anchors are the first ``n`` of a seeded permutation of the users with training items (so a
    larger population keeps the smaller one's personas, and their cached answers); a cold-start
    persona's history is the :data:`COLD_START_ITEMS` items whose text is nearest its persona
    text (MiniLM cosine).

    Returns
    -------
    (list of Persona, dict)
        The personas and who wrote their texts (:func:`write_personas`).

    """
    train = split.matrix("train")
    active = np.flatnonzero(np.diff(train.indptr) > 0)
    if not cold_start and n > len(active):
        raise ConfigError(f"--personas {n} exceeds the {len(active)} users with training items; "
                          "ask for fewer personas or use --cold-start")
    if n < 1:
        raise ConfigError(f"--personas {n} is below 1; simulate 1 or more personas")
    anchors = None
    rows: list[np.ndarray] = []
    if not cold_start:
        anchors = np.random.default_rng([seed, PERSONA_SALT, 2]).permutation(active)[:n]
        rows = [train.indices[train.indptr[u]:train.indptr[u + 1]] for u in anchors]
    personas = sample_personas(n, seed, texts, rows, anchors, noun)
    counts = write_personas(personas, llm, seed, noun=noun)
    if cold_start:
        item_emb = encoder.encode([item_text_string(t) for t in texts])
        persona_emb = encoder.encode([f"{p.text} Favourite genres: {', '.join(p.genres)}."
                                      for p in personas])
        for p, e in zip(personas, persona_emb, strict=True):
            p.seed_items = [int(i) for i in seed_items(e, item_emb, COLD_START_ITEMS)]
    return personas, counts


def compare(rankers: Sequence[Ranker], personas: list[Persona], llm: LLM,
            encoder: SentenceEncoder, texts: list[ItemText], split: Split, raw_ids: list[str],
            opts: SessionOptions, out: Path | None = None,
            setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the sessions of every ranker; write their files and the report into ``out``.

    Returns
    -------
    dict
        ``{"setup", "personas", "runs": [{"label", "metrics", "llm", "seconds", "records"}]}``
        (``report.json`` is this without the records, which go to ``sessions.jsonl``).

    """
    pop = item_popularity(split)
    runs = []
    for ranker in rankers:
        before, t0 = llm.stats.copy(), time.perf_counter()
        records = simulate(ranker, personas, llm, encoder, texts, split, opts)
        runs.append({"label": ranker.name, "metrics": summarize(records, pop),
                     "llm": llm.stats.since(before).as_dict(),
                     "seconds": round(time.perf_counter() - t0, 2), "records": records})
        if out is not None:
            write_recbole(out, ranker.name, records, personas, texts, raw_ids)
    report = {"setup": (setup or {}) | {"personas": len(personas), "sessions": opts.sessions,
                                        "options": asdict(opts), "closed_loop": opts.closed_loop,
                                        "seed": opts.seed},
              "personas": [p.as_dict() for p in personas], "runs": runs}
    report["setup"].setdefault("policy", "llm")
    if out is not None:
        slim = report | {"runs": [{k: v for k, v in r.items() if k != "records"}
                                  for r in runs]}
        (out / "report.json").write_text(json.dumps(slim, indent=2, sort_keys=True) + "\n")
        (out / "report.md").write_text(report_markdown(report, texts))
    return report


def simulate_runs(run_dirs: Sequence[Path], n_personas: int, sessions: int, out: Path, *,
                  llm: LLM, encoder: SentenceEncoder, policy: str = "llm", seed: int = 0,
                  closed_loop: bool = True, cold_start: bool = False,
                  labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Load trained runs and compare them with one persona population (the CLI's work).

    Raises
    ------
    ConfigError
        No run is given, a run folder is unusable (:func:`load_run`), or the runs do not share
        one dataset and split.

    """
    if not run_dirs:
        raise ConfigError("no recommender to test; give --model RUN_DIR (repeat it to compare)")
    names = list(labels) if labels else [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    rankers: list[TrainedRecommender] = [load_run(d, n, seed) for d, n in zip(run_dirs, names,
                                                                          strict=True)]
    first = rankers[0].cfg
    for r in rankers[1:]:
        same = (r.cfg.dataset, r.cfg.split, r.cfg.split_seed, r.cfg.min_rating)
        if same != (first.dataset, first.split, first.split_seed, first.min_rating):
            raise ConfigError(f"runs {run_dirs[0]} and {r.name} use different data ({first.dataset}"
                              f"/{first.split} vs {r.cfg.dataset}/{r.cfg.split}); compare runs "
                              "trained on the same dataset and split")
    split, split_path = get_split(first.dataset, first.split, first.split_seed,
                                  first.data_dir or None, first.min_rating,
                                  first.synthetic_params())
    raw_ids = split_item_ids(split_path, first.dataset)
    texts = load_item_text(first.dataset, first.data_dir or None, raw_ids,
                           synthetic=first.synthetic_params())
    noun = noun_for(first.dataset, texts)
    t0 = time.perf_counter()
    personas, counts = make_personas(n_personas, split, texts, llm, encoder, seed, noun,
                                     cold_start)
    setup = {"policy": policy, "dataset": first.dataset, "split": first.split,
             "models": [str(d) for d in run_dirs], "llm": llm.key, "encoder": encoder.key,
             "cold_start": cold_start, "persona_writing": counts,
             "persona_seconds": round(time.perf_counter() - t0, 2)}
    out.mkdir(parents=True, exist_ok=True)
    opts = SessionOptions(sessions=sessions, closed_loop=closed_loop, seed=seed, noun=noun)
    return compare(rankers, personas, llm, encoder, texts, split, raw_ids, opts, out, setup)


def build_persona_llm(backend: str, seed: int = 0, model: str = "", base_url: str = "",
                      cache: bool = True) -> tuple[LLM, str]:
    """The LLM that plays the personas, and the policy's name for the report.

    ``scripted`` is :func:`florec.sim.personas.policy.scripted_persona_llm` (policy
    ``scripted-genre``); ``hf``, ``openai`` and ``tiny`` are the LLM layer's backends (policy
    ``llm``), wrapped in the call cache.
    """
    from florec.models.llm.config import SMOLLM2, LLMConfig
    from florec.models.llm.factory import build_llm
    from florec.sim.personas.policy import scripted_persona_llm

    if backend == "scripted":
        return scripted_persona_llm(seed), "scripted-genre"
    cfg = LLMConfig(backend=backend, model=model or SMOLLM2, base_url=base_url, seed=seed,
                    cache=cache)
    return build_llm(cfg), "llm"
