r"""Persona harness benchmark (issue 14): BPR vs FS-Pair tested by persona users in closed loop.

Steps (each skipped when its output exists, so a stopped run resumes; the LLM cache makes a rerun
of a finished step free):

1. ``train``: MF-BPR and MF with FS-Pair (``mf-loss='fs-pair'``) trained centrally on ML-100K,
   ``ratio-fs`` split, dim 64, Adam lr 0.005, weight decay 1e-3, selection on valid
   recall@20, at most ``--epochs`` epochs; folders under ``--runs`` (not committed: they hold
   model.npz), their test metrics copied to ``<out>/runs.json``.
2. ``control``: the scripted persona of known preference (:mod:`florec.sim.personas.policy`
   with patience 1: it reads the top item only and clicks it with p 0.9 when the item has one
   of its two favourite genres, else p 0.1; ML-100K's Drama and Comedy cover 43% and 30% of
   the catalogue, so with patience 3 a random list would nearly always match) against a
   genre-first ranker, a random ranker and the two trained runs: the plumbing check.
3. ``llm``: the same personas played by SmolLM2-135M-Instruct (``hf``), written by it too,
   against the two trained runs.

Every step writes ``<out>/<step>/report.json`` (metrics, LLM calls, seconds, the personas) and
``<out>/<step>/<recommender>/sessions.jsonl`` (every session with the persona's reason);
``<out>/summary.md`` tabulates them. Run::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/personas.py \
        --out docs/results/personas --steps control --personas 50 --sessions 3
    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/personas.py \
        --out docs/results/personas --steps llm --personas 50 --sessions 3

(the committed results: 50 personas for both steps; the SmolLM2 step's LLM phases took 528 s
on the 2-core machine, its ``report.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from florec.models.llm.encoder import SentenceEncoder
from florec.recdata.item_text import load_item_text, split_item_ids
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.sim.central import run_central
from florec.sim.personas.policy import scripted_persona_llm
from florec.sim.personas.recommender import GenreRanker, RandomRanker, load_run
from florec.sim.personas.run import build_persona_llm, compare, make_personas, noun_for
from florec.sim.personas.session import SessionOptions

TRAIN = {"dataset": "ml-100k", "model": "mf", "split": "ratio-fs", "dim": 64, "lr": 0.005,
         "weight-decay": 1e-3, "selection-metric": "recall@20", "ks": "10,20", "patience": 5}
LOSSES = {"bpr": "bpr", "fs-pair": "fs-pair"}
CONTROL_PATIENCE = 1


def train(runs: Path, epochs: int) -> dict[str, Path]:
    """Train (or reuse) the two recommenders; returns their folders."""
    folders = {}
    for name, loss in LOSSES.items():
        folder = runs / name
        if not (folder / "model.npz").is_file():
            run_central(parse_run_config(TRAIN | {"mf-loss": loss}), epochs, 1024, folder)
        folders[name] = folder
    return folders


def step(name: str, out: Path, folders: dict[str, Path], n: int, sessions: int, seed: int,
         llm_name: str) -> dict:
    """Run one step (``control`` or ``llm``) into ``out/name``."""
    target = out / name
    if (target / "report.json").is_file():
        return json.loads((target / "report.json").read_text())
    rankers = [load_run(folders[k], k, seed) for k in LOSSES]
    cfg = rankers[0].cfg
    split, path = get_split(cfg.dataset, cfg.split, cfg.split_seed, None, cfg.min_rating)
    raw = split_item_ids(path, cfg.dataset)
    texts = load_item_text(cfg.dataset, None, raw)
    noun = noun_for(cfg.dataset, texts)
    if name == "control":
        llm, policy = scripted_persona_llm(seed, CONTROL_PATIENCE), "scripted-genre-patience1"
        encoder = SentenceEncoder("tiny", progress=False)
        rankers = [GenreRanker([t.genres for t in texts], seed),
                   RandomRanker(len(texts), seed)] + rankers
    else:
        llm, policy = build_persona_llm(llm_name, seed)
        encoder = SentenceEncoder("minilm")
    t0 = time.perf_counter()
    before = llm.stats.copy()
    personas, counts = make_personas(n, split, texts, llm, encoder, seed, noun)
    setup = {"policy": policy, "llm": llm.key, "encoder": encoder.key, "dataset": cfg.dataset,
             "split": cfg.split, "persona_writing": counts,
             "persona_llm": llm.stats.since(before).as_dict(),
             "persona_seconds": round(time.perf_counter() - t0, 2)}
    target.mkdir(parents=True, exist_ok=True)
    return compare(rankers, personas, llm, encoder, texts, split, raw,
                   SessionOptions(sessions=sessions, seed=seed, noun=noun), target, setup)


def diagnostics(folder: Path, genres: list[set[str]], favourites: dict[str, set[str]]) -> dict:
    """Does the persona policy react to the list? Position bias and genre sensitivity.

    ``slot_a``: share of sessions whose considered item is the list's first; ``p_click_match`` /
    ``p_click_other``: mean click probability when the considered item has / lacks one of the
    persona's favourite genres (with their session counts).
    """
    recs = [json.loads(x) for x in (folder / "sessions.jsonl").read_text().splitlines()]
    match = [bool(genres[r["considered"]] & favourites[r["pid"]]) for r in recs]
    p = [r["p_click"] for r in recs]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {"slot_a": mean([float(r["shown"][0] == r["considered"]) for r in recs]),
            "p_click_match": mean([x for x, m in zip(p, match, strict=True) if m]),
            "p_click_other": mean([x for x, m in zip(p, match, strict=True) if not m]),
            "n_match": sum(match), "n_other": len(match) - sum(match)}


def summary(out: Path) -> str:
    """Markdown tables of every finished step (what docs/methods/personas.md shows)."""
    split, path = get_split(TRAIN["dataset"], TRAIN["split"], 0)
    genres = [set(t.genres) for t in load_item_text(TRAIN["dataset"], None,
                                                    split_item_ids(path, TRAIN["dataset"]))]
    lines = ["Generated by bench/personas.py from the report.json files beside it. CTR s.e. ="
             " sqrt(ctr (1 - ctr) / sessions) (treats sessions as independent).", ""]
    runs = out / "runs.json"
    if runs.is_file():
        lines += ["| recommender | test recall@20 | test ndcg@20 | test arp@20 | epochs |",
                  "|---|---|---|---|---|"]
        for name, r in json.loads(runs.read_text()).items():
            m = r["metrics"]
            lines.append(f"| {name} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | "
                         f"{m['arp@20']:.1f} | {r['best_round']}/{r['rounds']} |")
        lines.append("")
    for name in ("control", "llm"):
        path = out / name / "report.json"
        if not path.is_file():
            continue
        rep = json.loads(path.read_text())
        s = rep["setup"]
        lines += [f"## {name}: policy `{s['policy']}`, {s['personas']} personas x "
                  f"{s['sessions']} sessions, closed loop, persona texts "
                  f"{s['persona_writing']}", "",
                  "| recommender | CTR ± s.e. | expected CTR | CTR by session | ARP shown | "
                  "ARP clicked | coverage | LLM calls | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rep["runs"]:
            m = r["metrics"]
            clicked = "-" if m["arp_clicked"] is None else f"{m['arp_clicked']:.1f}"
            se = (m["ctr"] * (1 - m["ctr"]) / m["sessions"]) ** 0.5
            lines.append(
                f"| {r['label']} | {m['ctr']:.3f} ± {se:.3f} | {m['expected_ctr']:.3f} | "
                f"{', '.join(f'{x:.2f}' for x in m['ctr_by_session'])} | "
                f"{m['arp_shown']:.1f} | {clicked} | {m['coverage_shown']:.3f} | "
                f"{int(r['llm']['llm_calls'])} | {r['seconds']:.0f} |")
        lines.append("")
        fav = {x["pid"]: set(x["genres"]) for x in rep["personas"]}
        lines += ["| recommender | considered item = slot A | mean p(click), item of a favourite "
                  "genre (sessions) | mean p(click), other items (sessions) |", "|---|---|---|---|"]
        for r in rep["runs"]:
            d = diagnostics(out / name / r["label"], genres, fav)
            cells = [f"{d[k]:.3f} ({d[n]})" if d[k] is not None else f"- ({d[n]})"
                     for k, n in (("p_click_match", "n_match"), ("p_click_other", "n_other"))]
            lines.append(f"| {r['label']} | {d['slot_a']:.2f} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the steps, write the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/personas"))
    ap.add_argument("--runs", type=Path, default=Path("results/personas-runs"))
    ap.add_argument("--personas", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm", default="hf", help="hf, openai or tiny for the llm step")
    ap.add_argument("--steps", default="control,llm")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folders = train(args.runs, args.epochs)
    runs = {k: json.loads((f / "results.json").read_text())["runs"][0]
            for k, f in folders.items()}
    keep = ("metrics", "best_round", "rounds", "wall_s", "method")
    (args.out / "runs.json").write_text(json.dumps(
        {k: {x: r[x] for x in keep} for k, r in runs.items()}, indent=2, sort_keys=True) + "\n")
    for name in args.steps.split(","):
        step(name, args.out, folders, args.personas, args.sessions, args.seed, args.llm)
        (args.out / "summary.md").write_text(summary(args.out))
    print(summary(args.out))


if __name__ == "__main__":
    main()
