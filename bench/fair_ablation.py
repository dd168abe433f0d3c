"""Fair Sampling ablation: switch one difference from the authors' setup at a time (issue 15).

Each variant of ``bench/fair_ablation.toml`` trains central MF with summed BPR (uniform
negatives among the user's unseen items: the authors' rejection sampler, drawn exactly) and
with FS-Pair (:class:`florec.sim.central_fair.FairTrainer`), selects the epoch by validation
recall@20 with early stopping (:func:`florec.sim.central_loop.fit_and_select`), and records the
test metrics at that epoch twice:

- FloRec's protocol (train and valid items masked, every test item counts);
- the authors' protocol (``authors/`` keys: only train items masked, so validation items stay
  in the ranking and count as misses; test truth restricted to items seen in train, as their
  ``data.py`` does for ML-1M).

Switches (keys of a variant): ``data`` (``full``: every ML-1M rating, 6,040 x 3,706;
``authors``: ratings >= 4 and a 20-core filter, which gives exactly the 5,148 x 2,380 their
``data.py`` hard-codes), ``split`` (``ratio-fs``, or ``debiased``: a popularity-debiased test,
see :func:`debiased_split`; ``min-train`` = k keeps k train rows of every item),
``init-std``, ``lr``, ``weight-decay``, ``epochs``, ``patience``.

Usage::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/fair_ablation.py \
        --config bench/fair_ablation.toml --out docs/results/fair_ablation [--only LABEL] \
        [--losses bpr,fs-pair] [--seeds 0]

Finished cells (a ``results.json`` without ``"status": "running"``) are skipped. The report:
``python bench/fair_ablation_report.py``.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.models.metrics import evaluate_users, finalize
from florec.models.mf import MF
from florec.recdata.datasets import load_dataset
from florec.recdata.errors import ConfigError
from florec.recdata.fair_sampling import TrainIndex
from florec.recdata.interactions import Interactions
from florec.recdata.runconfig import RunConfig
from florec.recdata.splits import Split, fair_sampling_ratio, make_split
from florec.sim.central import evaluate_model, item_popularity
from florec.sim.central_fair import fair_mf
from florec.sim.central_loop import fit_and_select

LOSSES = ("bpr", "fs-pair")
DATASETS = {"full": "ml-1m", "authors": "ml-1m-authors"}
KEYS = {"data", "split", "init-std", "lr", "weight-decay", "epochs", "patience", "label", "note",
        "batch-size", "time-budget-s", "min-train"}


def k_core(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Mask of the interactions kept by an iterated k-core filter (users and items >= k).

    Items are filtered first, then users, until nothing changes (the order converges to the
    unique maximal k-core).
    """
    keep = np.ones(len(user), dtype=bool)
    while True:
        n = int(keep.sum())
        for ids in (item, user):
            counts = np.bincount(ids[keep], minlength=int(ids.max()) + 1)
            keep &= counts[ids] >= k
        if int(keep.sum()) == n:
            return keep


def authors_ml1m(data_dir: str | None = None, min_rating: float = 4.0, k: int = 20
                 ) -> Interactions:
    """ML-1M as the authors' counts imply: ratings >= 4, then a k-core filter (5,148 x 2,380)."""
    inter = load_dataset("ml-1m", data_dir, min_rating=min_rating)
    keep = k_core(inter.user, inter.item, k)
    return Interactions.from_raw(inter.user_ids[inter.user[keep]], inter.item_ids[inter.item[keep]],
                                 inter.time[keep], name="ml-1m-authors")


def debiased_split(inter: Interactions, seed: int, test: float = 0.2,
                   valid_of_train: float = 0.1, min_train: int = 0) -> np.ndarray:
    r"""Labels of a popularity-debiased test split (intervened test, as in DICE / MACR).

    Each interaction with item i goes to test with probability

    .. math:: p_i = \min(1, c / pop_i)

    with c set by bisection so that the expected test share is ``test``: every item contributes
    about c test interactions, so the test set is close to uniform over items. The rest is split
    per user as in ``ratio-fs`` (10% of each user's remaining items to valid).

    With ``min_train = 0`` (the ``*-debiased`` variants without ``-min``) every item with
    :math:`pop_i \le c` goes wholly to test, so it has no train row: the switch changes training
    as well as the test (see :func:`cold_rows`). ``min_train = k > 0`` then returns random test
    rows of each item to the rest until it keeps :math:`\min(k, pop_i)` non-test rows (the test
    share drops below ``test``), and after the per-user valid draw moves random valid rows of an
    item to train until it has :math:`\min(k, pop_i)` train rows, so every item is trainable.
    """
    rng = np.random.default_rng(seed)
    pop = np.bincount(inter.item, minlength=inter.n_items).astype(np.float64)[inter.item]
    lo, hi = 0.0, float(pop.max())
    for _ in range(60):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if np.minimum(1.0, c / pop).mean() < test else (lo, c)
    to_test = rng.random(len(inter)) < np.minimum(1.0, c / pop)
    if min_train > 0:
        kept = np.bincount(inter.item[~to_test], minlength=inter.n_items)
        total = np.bincount(inter.item, minlength=inter.n_items)
        need = np.minimum(min_train, total) - kept
        order = rng.permutation(len(inter))
        for i in np.flatnonzero(need > 0):
            rows = order[(inter.item[order] == i) & to_test[order]][:need[i]]
            to_test[rows] = False
    labels = np.full(len(inter), 2, dtype=np.int8)
    rest = np.flatnonzero(~to_test)
    sub = Interactions(user=inter.user[rest], item=inter.item[rest], time=inter.time[rest],
                       n_users=inter.n_users, n_items=inter.n_items, user_ids=inter.user_ids,
                       item_ids=inter.item_ids)
    inner = fair_sampling_ratio(sub, seed + 1, test=0.0, valid_of_train=valid_of_train)
    labels[rest] = inner
    if min_train > 0:  # valid may have taken an item's kept rows: give train its k back
        short = np.minimum(min_train, total) - np.bincount(inter.item[labels == 0],
                                                           minlength=inter.n_items)
        order = rng.permutation(len(inter))
        for i in np.flatnonzero(short > 0):
            rows = order[(inter.item[order] == i) & (labels[order] == 1)][:short[i]]
            labels[rows] = 0
    return labels


def cold_rows(split: Split) -> dict[str, int]:
    """How many items have no train row, and how many test rows they carry.

    Under FloRec's protocol those test rows count (BPR pushes such items down as uniform
    negatives; FS-Pair never touches them); the authors' drops them from the truth.
    """
    train = np.bincount(split.parts["train"][1], minlength=split.n_items)
    test_items = split.parts["test"][1]
    seen = np.zeros(split.n_items, dtype=bool)
    for _, items, _ in split.parts.values():
        seen[items] = True
    cold = seen & (train == 0)
    return {"items": int(seen.sum()), "cold-items": int(cold.sum()),
            "test-rows": len(test_items), "cold-test-rows": int(cold[test_items].sum())}


def build_split(data: str, split: str, seed: int, data_dir: str | None,
                min_train: int = 0) -> Split:
    """The variant's dataset and split (``min_train``: see :func:`debiased_split`)."""
    if data == "full":
        inter = load_dataset("ml-1m", data_dir, min_rating=1.0)
    elif data == "authors":
        inter = authors_ml1m(data_dir)
    else:
        raise ConfigError(f"data '{data}' is unknown; use full or authors")
    if split == "ratio-fs" and min_train == 0:
        return make_split(inter, "ratio-fs", seed)
    if split == "ratio-fs":
        raise ConfigError(f"min-train = {min_train} applies only to split 'debiased'; "
                          "drop min-train or use split = 'debiased'")
    if split != "debiased":
        raise ConfigError(f"split '{split}' is unknown; use ratio-fs or debiased")
    labels = debiased_split(inter, seed, min_train=min_train)
    parts = {name: (inter.user[labels == k], inter.item[labels == k], inter.time[labels == k])
             for k, name in enumerate(("train", "valid", "test"))}
    return Split(parts=parts, n_users=inter.n_users, n_items=inter.n_items)


def authors_test(model: MF, split: Split, ks: list[int], chunk: int) -> dict[str, float]:
    """Test metrics under the authors' protocol: train items masked, truth on train items."""
    pop = item_popularity(split)
    truth = split.matrix("test").multiply((pop > 0)[None, :].astype(np.float32)).tocsr()
    truth.eliminate_zeros()
    model.eval()
    with torch.no_grad():
        sums = evaluate_users(model.score, np.arange(split.n_users), split.matrix("train"), truth,
                              ks, chunk, "cpu", item_pop=pop)
    model.train()
    return {f"authors/{k}": v for k, v in finalize(sums).items()}


def run_cell(v: dict[str, Any], loss: str, seed: int, out_dir: Path,
             data_dir: str | None) -> dict[str, Any]:
    """Train one (variant, loss, seed) cell and write it under ``out_dir``."""
    split = build_split(v["data"], v["split"], seed, data_dir, v.get("min-train", 0))
    cfg = RunConfig(dataset="ml-1m", split="ratio-fs", seed=seed, split_seed=seed, model="mf",
                    mf_loss=loss, dim=64, init_std=v["init-std"], lr=v["lr"],
                    weight_decay=v["weight-decay"], ks="10,20", selection_metric="recall@20",
                    patience=v["patience"], eval_chunk=2048)
    # the data and split actually run (not run-config values, so set after validation)
    cfg = cfg.model_copy(update={"dataset": DATASETS[v["data"]], "split": v["split"]})
    torch.manual_seed(seed)
    model, trainer = fair_mf(cfg, TrainIndex.from_csr(split.matrix("train")))
    ks = cfg.k_list

    def test() -> dict[str, float]:
        return evaluate_model(model, split, "test", ks, cfg.eval_chunk) | authors_test(
            model, split, ks, cfg.eval_chunk)

    config = cfg.to_flower() | {"ablation": v, "loss": loss, "n-users": split.n_users,
                                "n-items": split.n_items,
                                "n-train": int(split.matrix("train").nnz),
                                "n-test": int(split.matrix("test").nnz), "setting": "central"}
    return fit_and_select(
        cfg, f"mf-{loss}", v["epochs"], train_epoch=lambda: trainer.epoch(v["batch-size"]),
        validate=lambda: evaluate_model(model, split, "valid", ks, cfg.eval_chunk),
        test=test, out_dir=out_dir, config=config, time_budget_s=v.get("time-budget-s"))


def variants(config: Path) -> list[dict[str, Any]]:
    """The config's variants, each merged over ``[defaults]``.

    Raises
    ------
    ConfigError
        A variant has an unknown key or no label.

    """
    doc = tomllib.loads(config.read_text())
    out = []
    for v in doc.get("variant", []):
        merged = doc.get("defaults", {}) | v
        bad = set(merged) - KEYS
        if bad or "label" not in merged:
            raise ConfigError(f"{config}: variant {v.get('label', '?')} has unknown keys "
                              f"{sorted(bad)} or no label; allowed: {sorted(KEYS)}")
        out.append(merged)
    return out


def finished(path: Path) -> bool:
    """Whether ``path`` (a results.json) holds a finished run."""
    return path.exists() and json.loads(path.read_text()).get("status") != "running"


def main(argv: list[str] | None = None) -> None:
    """Run the ablation cells that are not finished yet."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("bench/fair_ablation.toml"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/fair_ablation"))
    ap.add_argument("--only", default="", help="comma-separated variant labels, run in this order")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split-stats", action="store_true",
                    help="only write <out>/split_stats.json: cold_rows per (data, split, "
                         "min-train, seed)")
    args = ap.parse_args(argv)
    todo = variants(args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.split_stats:
        triples = sorted({(v["data"], v["split"], v.get("min-train", 0)) for v in todo})
        stats = [{"data": d, "split": sp, "min-train": k, "seed": seed}
                 | cold_rows(build_split(d, sp, seed, args.data_dir, k))
                 for d, sp, k in triples for seed in seeds]
        (args.out / "split_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
        print(f"wrote {args.out / 'split_stats.json'}")
        return
    if args.only:  # in the order given
        by_label = {v["label"]: v for v in todo}
        unknown = [s for s in args.only.split(",") if s not in by_label]
        if unknown:
            raise ConfigError(f"--only names unknown variants {unknown}; the config has "
                              f"{sorted(by_label)}")
        todo = [by_label[s] for s in args.only.split(",")]
    for v in todo:
        for seed in seeds:
            for loss in args.losses.split(","):
                out = args.out / v["label"] / loss / f"seed{seed}"
                if finished(out / "results.json"):
                    continue
                run = run_cell(v, loss, seed, out, args.data_dir)
                print(f"{v['label']} {loss} seed{seed}: recall@20 {run['metrics']['recall@20']:.4f}"
                      f" best {run['best_epoch']}/{run['epochs_run']}", flush=True)


if __name__ == "__main__":
    main()
