"""Does a prompt get the same answer alone as in a batch? (hf backend, SmolLM2-135M, CPU).

For each dtype and decoding mode (greedy; sampled at T = 0.7 with one seed) the same prompts are
answered once as one batch and once one by one; the raw file lists, per prompt, whether the two
texts are equal and the first differing character. The per-prompt sampler
(:class:`florec.models.llm.hf.RowSampler`) removes the random-number part of the batch
dependence; what is left is the rounding of the logits, which differs between batch layouts
(padding, the shared-prefix KV copy) and flips near-ties.

Run (a real-LLM run: ``nice -n 19``, one thread)::

    OMP_NUM_THREADS=1 nice -n 19 python bench/llm_sampling.py \
        --out docs/results/llm_sampling/batch_vs_alone.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from florec.models.llm import LLMConfig, build_llm

PROMPTS = [
    "Describe the movie Toy Story (1995) in one sentence.",
    "Which genres does the user like? History: Heat (1995); Fargo (1996); Babe (1995).",
    "Write three keywords for a science fiction fan.",
    "The user bought a microscope, slides and a lab notebook. What might they buy next?",
    "Summarise in ten words: a retired teacher who likes gardening and crime novels.",
    "Name one film like Casablanca (1942) and say why.",
]


def compare(llm: Any, prompts: list[str], **kw: Any) -> list[dict[str, Any]]:
    """Answer ``prompts`` as one batch and one by one; per prompt: equal, first difference."""
    batch = llm.generate(prompts, **kw)
    alone = [llm.generate([p], **kw)[0] for p in prompts]
    rows = []
    for b, a in zip(batch, alone, strict=True):
        diff = next((i for i, (x, y) in enumerate(zip(b, a, strict=False)) if x != y),
                    None if b == a else min(len(a), len(b)))
        rows.append({"equal": b == a, "first_diff_char": diff, "batch": b, "alone": a})
    return rows


def main() -> None:
    """Run every (dtype, mode) cell and write the raw JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("results/llm_sampling.json"))
    args = ap.parse_args()
    cells = []
    for dtype in args.dtypes.split(","):
        llm = build_llm(LLMConfig(backend="hf", dtype=dtype, device="cpu", cache=False,
                                  progress=False, batch_size=len(PROMPTS)))
        for mode, kw in (("greedy", {}), ("sampled", {"temperature": 0.7, "seed": args.seed})):
            t0 = time.perf_counter()
            rows = compare(llm, PROMPTS, max_new_tokens=args.tokens, **kw)
            cells.append({"dtype": dtype, "mode": mode, "key": llm.key,
                          "equal": sum(r["equal"] for r in rows), "prompts": len(rows),
                          "seconds": time.perf_counter() - t0, "rows": rows})
            print(dtype, mode, f"{cells[-1]['equal']}/{len(rows)} equal", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "max_new_tokens": args.tokens, "seed": args.seed, "temperature": 0.7,
        "threads": os.environ.get("OMP_NUM_THREADS"), "load_average": os.getloadavg(),
        "cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
