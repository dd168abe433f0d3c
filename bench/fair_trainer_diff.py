"""How far the fair MF bucket trainer is from the per-step autograd trainer it replaced.

The reference trainers are the test's (``reference_fair_pair`` / ``reference_fair_point`` in
``tests/client/test_fair_embedding_fast.py``: per step an autograd graph over the tables and
masked per-user Adam). Both train buckets of real data with the fair bench's settings
(:data:`perf_ratios.FAIR`: buckets of 100, batches of 64, d = 64, Adam, one local epoch);
the output is, per bucket and loss, the largest absolute difference of the private embeddings
and of the item-row deltas, the largest reference delta (so a small difference is not a
vacuous one) and the relative difference of the summed loss.

Run: ``OMP_NUM_THREADS=1 python bench/fair_trainer_diff.py --dataset ml-100k --buckets 0,5,9
--out docs/results/perf/fair_trainer_diff.json`` (data under ``$FLOREC_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diff(dataset: str, losses: list[str], bucket_index: int = 0,
         extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Both trainers on bucket ``bucket_index`` of ``dataset``, one row per loss.

    ``extra`` run-config keys override :data:`perf_ratios.FAIR` (e.g. a small synthetic set).

    Raises
    ------
    AssertionError
        The two trainers touch different (user, item) rows.

    """
    from florec.client.trainers.bpr_embedding import LocalConfig
    from florec.client.trainers.fair_embedding import fair_local_update
    from florec.models.base import seeded_rows
    from florec.models.mf import MF, USER_SALT
    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.store import get_split

    ratios = _load("perf_ratios", ROOT / "bench" / "perf_ratios.py")
    ref = _load("fair_reference", ROOT / "tests" / "client" / "test_fair_embedding_fast.py")
    rows = []
    for loss in losses:
        cfg = parse_run_config(ratios.FAIR | {"dataset": dataset, "mf-loss": loss} | (extra or {}))
        split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                             cfg.min_rating, cfg.synthetic_params())
        bucket = ratios._buckets(cfg, split)[bucket_index]
        pop = np.asarray(split.matrix("train").sum(0)).ravel().astype(np.float32)
        item_emb = MF(0, split.n_items, dim=cfg.dim, seed=cfg.seed,
                      init_std=cfg.init_std).item_emb.detach().numpy()
        user_emb = seeded_rows(bucket.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
        local = LocalConfig.from_run_config(cfg, 1)
        new = fair_local_update(bucket, item_emb, np.zeros(split.n_items, np.float32), user_emb,
                                local, 1, item_pop=pop, n_users=split.n_users)
        if loss in ("fs-pair", "ubpr"):
            p, rows_, delta, value = ref.reference_fair_pair(bucket, item_emb, user_emb, local,
                                                             1, pop)
        else:
            p, rows_, delta, value = ref.reference_fair_point(
                bucket, item_emb, user_emb, local, 1, torch.as_tensor(pop), split.n_users)
        if not (np.array_equal(new.row_user, rows_[0]) and np.array_equal(new.row_item,
                                                                          rows_[1])):
            raise AssertionError(f"{loss}: the two trainers touch different rows")
        rows.append({"loss": loss, "dataset": dataset, "bucket": bucket_index,
                     "users": len(bucket.users), "items": split.n_items, "rows": len(delta),
                     "max_abs_diff_user_emb": float(np.abs(new.user_emb - p).max()),
                     "max_abs_diff_delta": float(np.abs(new.delta - delta).max()),
                     "max_abs_reference_delta": float(np.abs(delta).max()),
                     "loss_rel_diff": abs(new.loss_sum - value) / abs(value)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Measure and write one JSON object (command, torch version, a row per loss)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--losses", default="fs-pair,ubpr,fs-point,wmf,relmf,du")
    parser.add_argument("--buckets", default="0,5,9")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for b in args.buckets.split(",")
            for row in diff(args.dataset, [x for x in args.losses.split(",") if x], int(b))]
    args.out.write_text(json.dumps({
        "command": f"OMP_NUM_THREADS=1 python bench/fair_trainer_diff.py --dataset "
                   f"{args.dataset} --losses {args.losses} --buckets {args.buckets}",
        "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
