r"""Fill the LLM call cache with one CoT-Rec perception phase, in its own process.

A central CoT-Rec run generates item perception, then user perception, one after the other.
On a shared machine a second process can answer the other phase's prompts at the same time: the
run then finds them in the call cache (same prompts, same parameters, so the same cache keys)
and reports them as cache hits. This script runs one phase exactly as
:mod:`florec.sim.central_cotrec` builds it and writes its costs (seconds, calls, cache hits,
tokens) as JSON, so the minutes of the phase are still reported::

    nice -n 19 env FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 \
        python bench/cotrec_prefill.py --phase user --dataset ml-100k \
        --out docs/results/cotrec/ml-100k/central/prefill-user-perception.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Parse the arguments, run the phase, write its costs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=("item", "user"), required=True)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--llm-batch-size", type=int, default=64)
    ap.add_argument("--set", nargs="*", default=[], help="extra run-config key=value (JSON)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from florec.models.cotrec.perception import item_perception, user_perception
    from florec.models.cotrec.pipeline import histories, item_texts
    from florec.models.llm.config import LLMConfig
    from florec.models.llm.factory import build_llm
    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.sequences import UserSequences
    from florec.recdata.store import get_split

    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
             for k, v in (s.split("=", 1) for s in args.set)}
    cfg = parse_run_config({"model": "cotrec", "cotrec-init": "cotrec", "llm-backend": "hf",
                            "dataset": args.dataset} | extra)
    split, split_path = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                                  cfg.min_rating, cfg.synthetic_params())
    texts = item_texts(cfg, split_path, split.n_items)
    llm = build_llm(LLMConfig.from_run_config(cfg, batch_size=args.llm_batch_size))
    t0 = time.perf_counter()
    if args.phase == "item":
        item_perception(llm, texts, cfg.cotrec_item_tokens)
    else:
        seqs = UserSequences.from_split(split)
        hists = histories(seqs, np.arange(split.n_users), "train", cfg.cotrec_history, texts)
        user_perception(llm, hists, cfg.cotrec_user_tokens)
    report = {"phase": f"{args.phase}-perception", "dataset": cfg.dataset,
              "seconds": time.perf_counter() - t0, "llm": llm.stats.as_dict(),
              "llm-batch-size": args.llm_batch_size, "llm-key": llm.key,
              "item-tokens": cfg.cotrec_item_tokens, "user-tokens": cfg.cotrec_user_tokens}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
