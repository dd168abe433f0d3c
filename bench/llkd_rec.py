r"""The LLKD student's item categories as a recommender feature: category-aware negatives in MF-BPR.

MF-BPR on ML-100K (time-free leave-one-out, the central trainer's split, metrics and best-epoch
selection on validation) with four negative samplers; a share ``hard`` of each batch's negatives
is drawn from the positive item's category (an unseen item of the same category), the rest
uniformly from the user's unseen items:

* ``uniform``: plain MF-BPR (no categories);
* ``random``: categories drawn at random (control: same sampler, meaningless labels);
* ``student``: the LLKD student's predicted category of every item (the student is trained
  as in ``bench/llkd.py`` with the configured teacher, then labels all items from their titles);
* ``gold``: the item's genre among the task's classes (items without one: uniform).

Writes ``<out>/rec.json`` and prints a table (mean +- std over seeds, paired differences).

Run::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llkd_rec.py \
        --out docs/results/llkd --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUN = {"model": "mf", "dataset": "ml-100k", "split": "loo", "dim": 64, "lr": 0.005,
       "optimizer": "adam", "patience": 5, "ks": "10,20", "device": "cpu"}
LLKD = {"model": "llkd", "dataset": "ml-100k", "llkd-classes": 6, "llkd-ema": 0.9,
        "llm-backend": "scripted", "scripted-p": 0.6, "encoder": "minilm"}


def category_negatives(users: np.ndarray, pos: np.ndarray, train: Any, labels: np.ndarray,
                       rng: np.random.Generator, hard: float) -> np.ndarray:
    """Uniform unseen negatives; a share ``hard`` replaced by an unseen item of ``pos``'s class.

    Items with label ``-1`` (no category) and draws that hit a seen item keep the uniform one.
    """
    from florec.recdata.sampling import sample_negatives

    neg = sample_negatives(users, train, rng.random(len(users)))
    order = np.argsort(labels, kind="stable")
    classes, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    slot = {int(c): i for i, c in enumerate(classes)}
    pick = np.flatnonzero((rng.random(len(users)) < hard) & (labels[pos] >= 0))
    if len(pick) == 0:
        return neg
    idx = np.array([slot[int(c)] for c in labels[pos[pick]]])
    cand = order[start[idx] + (rng.random(len(pick)) * count[idx]).astype(np.int64)]
    seen = np.asarray(train[users[pick], cand]).ravel() > 0
    ok = ~seen & (cand != pos[pick])
    neg[pick[ok]] = cand[ok]
    return neg


def train_mf(labels: np.ndarray | None, seed: int, epochs: int, hard: float,
             data_dir: str) -> dict[str, Any]:
    """MF-BPR with the category-aware sampler (``labels=None``: uniform); best-epoch metrics."""
    from florec.models.registry import model_from_config
    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.store import get_split
    from florec.sim.central import evaluate_model
    from florec.sim.central_loop import fit_and_select

    cfg = parse_run_config(RUN | {"seed": seed, "data-dir": data_dir})
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    torch.manual_seed(seed)
    model = model_from_config(cfg, "mf", split.n_users, split.n_items)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([seed, 1313, 7])
    train = split.matrix("train").tocsr()
    coo = train.tocoo()
    flat = np.full(split.n_items, -1) if labels is None else labels

    def epoch() -> dict[str, float]:
        order = rng.permutation(coo.nnz)
        users, pos = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
        neg = category_negatives(users, pos, train, flat, rng, hard if labels is not None else 0)
        total = 0.0
        for s in range(0, len(users), 1024):
            batch = [torch.as_tensor(a[s:s + 1024]) for a in (users, pos, neg)]
            opt.zero_grad()
            loss = model.loss(*batch)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch[0])
        return {"train-loss": total / len(users)}

    run = fit_and_select(cfg, "mf", epochs, train_epoch=epoch,
                         validate=lambda: evaluate_model(model, split, "valid", cfg.k_list),
                         test=lambda: evaluate_model(model, split, "test", cfg.k_list))
    return {"ndcg@10": run["metrics"]["ndcg@10"], "hr@10": run["metrics"].get("hr@10"),
            "best_round": run["best_round"]}


def student_labels(seed: int, data_dir: str, epochs: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The LLKD student's class of every item, the gold classes, and the student's test metrics."""
    from florec.models.cotrec.pipeline import encode_cached
    from florec.models.llm.encoder import SentenceEncoder
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central_llkd import prepare, train_rule

    cfg = parse_run_config(LLKD | {"seed": seed, "data-dir": data_dir})
    prep = prepare(cfg)
    result = train_rule(prep, cfg, "llkd", epochs)
    emb = encode_cached(SentenceEncoder(cfg.encoder), prep.task.inputs)
    labels = result["trainer"].student.predict(emb)
    return labels, prep.task.gold, {k: result[k] for k in ("accuracy", "macro-f1", "share_ever")}


def _sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(report: dict[str, Any]) -> str:
    """Markdown: mean +- std over seeds per sampler and the paired difference to ``uniform``."""
    rows = report["rows"]
    base = {r["seed"]: r["ndcg@10"] for r in rows if r["sampler"] == "uniform"}
    lines = ["| sampler | ndcg@10 | hr@10 | paired diff ndcg@10 vs uniform |",
             "|---|---|---|---|"]
    for name in ("uniform", "random", "student", "gold"):
        sel = [r for r in rows if r["sampler"] == name]
        nd = np.array([r["ndcg@10"] for r in sel])
        hr = np.array([r["hr@10"] for r in sel])
        diff = np.array([r["ndcg@10"] - base[r["seed"]] for r in sel])
        lines.append(f"| {name} | {nd.mean():.4f} ± {_sd(nd):.4f} | {hr.mean():.4f} ± "
                     f"{_sd(hr):.4f} | {diff.mean():+.4f} ± {_sd(diff):.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Four samplers x seeds; writes ``rec.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/llkd"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hard", type=float, default=0.5)
    parser.add_argument("--from-json", action="store_true",
                        help="only rewrite rec.md from <out>/rec.json")
    args = parser.parse_args()
    if args.from_json:
        (args.out / "rec.md").write_text(table(json.loads((args.out / "rec.json").read_text())))
        return
    data_dir = os.environ.get("FLOREC_DATA_DIR", "")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        labels, gold, student = student_labels(seed, data_dir, 10)
        rng = np.random.default_rng([seed, 99])
        variants = {"uniform": None, "random": rng.integers(0, labels.max() + 1, len(labels)),
                    "student": labels, "gold": gold}
        for name, lab in variants.items():
            rows.append({"seed": seed, "sampler": name, "student": student}
                        | train_mf(lab, seed, args.epochs, args.hard, data_dir))
            print(rows[-1], flush=True)
    report = {"rows": rows, "run": RUN, "llkd": LLKD, "hard": args.hard, "epochs": args.epochs,
              "minutes": (time.perf_counter() - t0) / 60, "load_average": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rec.json").write_text(json.dumps(report, indent=1))
    (args.out / "rec.md").write_text(table(report))
    print(table(report))

if __name__ == "__main__":
    main()
