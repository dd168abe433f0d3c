r"""LLMD4Rec positive controls (issue 13): distilled SASRec vs plain SASRec, paired over seeds.

Reads ``bench/llmd4rec.toml``. Three steps, each resumable (finished files are reused):

1. ``pretrain``: SASRec (the CRM) of every student seed and every teacher seed, early-stopped
   on validation ndcg@10; weights go to ``<work>/pretrain/seed<s>.pt`` (not committed);
2. ``arms``: from each student's pretrained weights, every arm of the config (``continued``:
   the same epochs with lambda-crm = 0; ``ensemble``: the teacher-seed SASRecs as teacher;
   ``scripted-p*``: the target-knowing scripted teacher; ``smollm2``: the real LLM) runs the
   distillation loop of :mod:`florec.sim.central_llmd4rec`; each writes
   ``<out>/<arm>/seed<s>.json`` (its results.json entry);
3. ``summary``: ``<out>/summary.json`` and ``summary.md``: test ndcg@10 / hr@10 per arm (mean
   and sample sd over seeds), each arm's own pretrained SASRec and its gain over it, and paired
   t-tests (scipy) of each arm against that SASRec and against ``continued`` (only over seeds
   whose two cells started from the same pretrained SASRec: a later ``pretrain`` may not
   reproduce an earlier one bit for bit). The ``sasrec`` row is ``continued``'s pretrained CRMs.

Run (one thread per process; the numbers in docs/methods/llmd4rec.md came from this)::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llmd4rec.py pretrain
    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/llmd4rec.py arms \
        --arms continued,ensemble,scripted-p0.3,scripted-p0.6
    python bench/llmd4rec.py summary
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
METRICS = ("ndcg@10", "hr@10")


def load(path: Path) -> dict[str, Any]:
    """The bench config (``[bench]``, ``[defaults]``, ``[arms.<name>]``)."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def _cfg(conf: dict[str, Any], seed: int, arm: dict[str, Any] | None = None):
    from florec.recdata.runconfig import parse_run_config

    return parse_run_config(conf["defaults"] | {"dataset": conf["bench"]["dataset"],
                                                "seed": seed} | (arm or {}))


def _data(cfg):
    import numpy as np

    from florec.recdata.sequences import UserSequences
    from florec.recdata.store import get_split

    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    seqs = UserSequences.from_split(split)
    users = np.arange(split.n_users)
    inputs = {p: seqs.inputs(users, p, cfg.max_seq_len) for p in ("valid", "test")}
    return split, seqs.inputs(users, "train", cfg.max_seq_len), inputs


def _validator(model, inputs, masks, truths, ks):
    from florec.client.trainers.sequential import sequence_metric_sums
    from florec.models.metrics import split_metrics

    return lambda: split_metrics(sequence_metric_sums(model, inputs, masks, truths, ks,
                                                      parts=("valid",)), "valid")


def pretrain_all(conf: dict[str, Any], work: Path, only: list[int] | None = None) -> None:
    """Step 1: pretrain every student and teacher seed (or those in ``only``; skips done ones)."""
    import torch

    from florec.sim.central_llmd4rec import build_crm, pretrain

    (work / "pretrain").mkdir(parents=True, exist_ok=True)
    for seed in [*conf["bench"]["seeds"], *conf["bench"]["teacher-seeds"]]:
        path = work / "pretrain" / f"seed{seed}.pt"
        if path.exists() or (only and seed not in only):
            continue
        cfg = _cfg(conf, seed)
        split, windows, inputs = _data(cfg)
        masks = {p: split.mask_for(p) for p in ("valid", "test")}
        truths = {p: split.matrix(p) for p in ("valid", "test")}
        model = build_crm(cfg, split.n_items)
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        state, best, ran = pretrain(
            cfg, model, windows, conf["bench"]["pretrain-epochs"],
            _validator(model, inputs, masks, truths, cfg.k_list), seed, on_epoch=rows.append)
        torch.save({"state": state, "best_epoch": best, "epochs_run": ran,
                    "seconds": time.perf_counter() - t0, "rows": rows}, path)
        print(f"pretrained seed {seed}: best epoch {best} of {ran}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


def run_arms(conf: dict[str, Any], work: Path, out: Path, arms: list[str]) -> None:
    """Step 2: every arm from every student's pretrained CRM (skips finished cells)."""
    import torch

    from florec.models.llmd4rec.teachers import EnsembleTeacher
    from florec.sim.central_llmd4rec import build_crm, run_central_llmd4rec

    members = None
    for seed in conf["bench"]["seeds"]:
        for arm in arms:
            path = out / arm / f"seed{seed}.json"
            if path.exists():
                continue
            cfg = _cfg(conf, seed, conf["arms"][arm])
            saved = torch.load(work / "pretrain" / f"seed{seed}.pt", weights_only=False)
            teacher = None
            if cfg.llmd4rec_teacher == "ensemble":
                if members is None:
                    split, _, _ = _data(cfg)
                    members = []
                    for t in conf["bench"]["teacher-seeds"]:
                        m = build_crm(cfg, split.n_items)
                        m.load_state_dict(torch.load(work / "pretrain" / f"seed{t}.pt",
                                                     weights_only=False)["state"])
                        members.append(m)
                teacher = EnsembleTeacher(members, cfg.eval_chunk)
            t0 = time.perf_counter()
            run = run_central_llmd4rec(cfg, 0, 0, teacher=teacher, crm_state=saved["state"])
            run["baseline"]["best_round"] = saved["best_epoch"]
            run["pretrain_epochs_run"] = saved["epochs_run"]
            run["pretrain_seconds"] = saved["seconds"]
            run["arm"] = arm
            run["config"] = cfg.to_flower()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run, indent=1, default=float))
            print(f"{arm} seed {seed}: ndcg@10 {run['metrics']['ndcg@10']:.4f} (SASRec "
                  f"{run['baseline']['metrics']['ndcg@10']:.4f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def _ttest(a: list[float], b: list[float]) -> float:
    from scipy.stats import ttest_rel

    if len(a) < 2 or all(x == y for x, y in zip(a, b, strict=True)):
        return math.nan
    return float(ttest_rel(a, b).pvalue)


def summarize(out: Path) -> dict[str, Any]:
    """Step 3: tables over the finished cells (seeds present in every compared arm)."""
    cells = {p.parent.name: {} for p in out.glob("*/seed*.json")}
    for p in sorted(out.glob("*/seed*.json")):
        cells[p.parent.name][int(p.stem[4:])] = json.loads(p.read_text())
    rows: dict[str, Any] = {}
    cont = cells.get("continued", {})
    ref = cont or next((cells[a] for a in sorted(cells)), {})
    base = {s: r["baseline"]["metrics"] for s, r in ref.items()}
    rows["sasrec"] = {"seeds": sorted(base), **{m: _mean_sd([base[s][m] for s in sorted(base)])
                                                for m in METRICS}}
    for arm, runs in sorted(cells.items()):
        seeds = sorted(runs)
        row: dict[str, Any] = {"seeds": seeds}
        # `continued` is a paired baseline only where both started from the same pretrained CRM
        both = [s for s in seeds if s in cont and cont[s]["baseline"]["metrics"]
                == runs[s]["baseline"]["metrics"]]
        for m in METRICS:
            mine = [runs[s]["metrics"][m] for s in seeds]
            plain = [runs[s]["baseline"]["metrics"][m] for s in seeds]
            row[m] = _mean_sd(mine)
            row[f"sasrec/{m}"] = _mean_sd(plain)
            row[f"gain/{m}"] = _mean_sd([x - y for x, y in zip(mine, plain, strict=True)])
            row[f"p_vs_sasrec/{m}"] = _ttest(mine, plain)
            if arm != "continued" and both:
                row[f"p_vs_continued/{m}"] = _ttest([runs[s]["metrics"][m] for s in both],
                                                    [cont[s]["metrics"][m] for s in both])
        row["coverage"] = statistics.fmean(it["coverage"] for s in seeds
                                           for it in runs[s]["iterations"])
        row["teacher_top1"] = statistics.fmean(it["teacher_top1"] for s in seeds
                                               for it in runs[s]["iterations"])
        crm_top1 = [it["crm_top1"] for s in seeds for it in runs[s]["iterations"]
                    if "crm_top1" in it]  # a federated run does not pool it
        row["crm_top1"] = statistics.fmean(crm_top1) if crm_top1 else math.nan
        row["minutes"] = statistics.fmean(runs[s]["wall_s"] for s in seeds) / 60
        if all("rerank" in runs[s] for s in seeds):
            row["rerank/ndcg@10"] = _mean_sd([runs[s]["rerank"]["rerank/ndcg@10"]
                                              for s in seeds])
            row["crm_topk/ndcg@10"] = _mean_sd([runs[s]["rerank"]["crm/ndcg@10"]
                                                for s in seeds])
        row["llm"] = {k: sum(runs[s].get("llm", {}).get(k, 0) for s in seeds)
                      for k in ("llm_calls", "llm_cache_hits", "prompt_tokens")}
        rows[arm] = row
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    (out / "summary.md").write_text(table(rows))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        if math.isnan(v[0]):
            return "-"
        return f"{v[0]:.4f} ± {v[1]:.4f}" if not math.isnan(v[1]) else f"{v[0]:.4f}"
    return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else "-"


def table(rows: dict[str, Any]) -> str:
    """The markdown table of ``summary.md``."""
    head = ("| arm | n | ndcg@10 | hr@10 | its SASRec ndcg@10 | gain ndcg@10 | p vs SASRec "
            "| p vs continued | coverage | CRM top-1 | teacher top-1 | re-ranked ndcg@10 "
            "| min/run |")
    lines = [head, "|" + "---|" * 13]
    for arm, r in rows.items():
        lines.append("| " + " | ".join([
            arm, str(len(r["seeds"])), _fmt(r["ndcg@10"]), _fmt(r["hr@10"]),
            _fmt(r.get("sasrec/ndcg@10", (math.nan, math.nan))),
            _fmt(r.get("gain/ndcg@10", (math.nan, math.nan))) if arm != "sasrec" else "-",
            _fmt(r.get("p_vs_sasrec/ndcg@10", math.nan)),
            _fmt(r.get("p_vs_continued/ndcg@10", math.nan)),
            _fmt(r.get("coverage", math.nan)), _fmt(r.get("crm_top1", math.nan)),
            _fmt(r.get("teacher_top1", math.nan)),
            _fmt(r.get("rerank/ndcg@10", (math.nan, math.nan))),
            _fmt(r.get("minutes", math.nan))]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: ``pretrain``, ``arms`` or ``summary``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("pretrain", "arms", "summary"))
    parser.add_argument("--config", type=Path, default=ROOT / "llmd4rec.toml")
    parser.add_argument("--work", type=Path, default=Path("results/llmd4rec-work"))
    parser.add_argument("--out", type=Path, default=ROOT.parent / "docs/results/llmd4rec")
    parser.add_argument("--arms", default="continued,ensemble,scripted-p0.3,scripted-p0.6")
    parser.add_argument("--seeds", default="", help="comma-separated subset of the seeds")
    parser.add_argument("--only", default="", help="pretrain: comma-separated seeds to train")
    args = parser.parse_args()
    conf = load(args.config)
    if args.seeds:
        conf["bench"]["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.step == "pretrain":
        pretrain_all(conf, args.work, [int(s) for s in args.only.split(",") if s])
    elif args.step == "arms":
        run_arms(conf, args.work, args.out, args.arms.split(","))
    else:
        print(table(summarize(args.out)))


if __name__ == "__main__":
    main()
