"""LLM-layer benchmark (measures, asserts nothing): SmolLM2-135M in-process and MiniLM on CPU.

Measures, for 1 and 2 torch threads: letter scoring of ranker-like prompts (~330 tokens: ten
watched titles and ten lettered candidates with genres from ML-100K, or synthetic titles),
batched greedy generation at batch 1 and 32, one LoRA (r=8) epoch over 64 such prompts, and
MiniLM titles/s; once: the load time of SmolLM2 cold (GGUF de-quantised and converted into an
empty cache) and cached (the plain copy), and the process's peak RSS. Writes one JSON file.

Usage: OMP_NUM_THREADS=1 python bench/llm_layer.py --out results/llm_layer [--quick]
(torch threads are set per measurement; OMP_NUM_THREADS=1 pins everything else).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from florec.models.llm import LETTERS, LLMConfig, build_llm
from florec.models.llm.encoder import SentenceEncoder
from florec.recdata.item_text import item_text_string, load_item_text


def item_lines(n: int = 1682) -> list[str]:
    """ML-100K item text (via FLOREC_DATA_DIR / cache / download), else synthetic titles."""
    try:
        from florec.recdata.datasets import load_dataset

        inter = load_dataset("ml-100k")
        return [item_text_string(t) for t in load_item_text("ml-100k", None, inter.item_ids)]
    except Exception:  # noqa: BLE001 (benchmark: any data problem falls back to synthetic)
        return [f"Movie {i} ({1950 + i % 50}) | Genres: genre_{i % 7}" for i in range(n)]


def ranker_prompts(lines: list[str], n: int, seed: int = 0) -> list[str]:
    """LlamaRec-style prompts: ten watched items, ten lettered candidates."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pick = rng.choice(len(lines), 20, replace=False)
        history = "\n".join(f"- {lines[i].split(' | ')[0]}" for i in pick[:10])
        cands = "\n".join(f"{LETTERS[j]}) {lines[i]}" for j, i in enumerate(pick[10:]))
        out.append(f"The user watched, in order:\n{history}\n\nWhich movie will the user watch "
                   f"next?\n{cands}\n\nAnswer with the letter only.")
    return out


def timed(fn) -> float:
    """Seconds one call of ``fn`` takes."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def load_times() -> dict:
    """SmolLM2 load: cold (GGUF -> plain copy in an empty cache) and cached."""
    with tempfile.TemporaryDirectory(prefix="florec-llm-bench-") as tmp:
        cfg = LLMConfig(backend="hf", cache_dir=Path(tmp), cache=False, progress=False)
        cold = timed(lambda: build_llm(cfg))
        cached = timed(lambda: build_llm(cfg))
    return {"load_cold_s": cold, "load_cached_s": cached}


def measure(threads: int, lines: list[str], quick: bool, cache_dir: Path) -> dict:
    """All throughput numbers at one thread count."""
    torch.set_num_threads(threads)
    llm = build_llm(LLMConfig(backend="hf", cache_dir=cache_dir, cache=False, progress=False))
    n_score = 16 if quick else 48
    prompts = ranker_prompts(lines, max(n_score, 64))
    tokens = llm.tokenizer([llm.chat_text(p) for p in prompts])["input_ids"]
    row = {"threads": threads, "dtype": str(llm.model.dtype).removeprefix("torch."),
           "prompt_tokens_mean": float(np.mean([len(t) for t in tokens]))}
    llm.choice_distribution(prompts[:2], 10)  # warm-up
    for batch in (1, 16):  # 1 = the CPU default (no padding)
        llm.score_batch_size = batch
        row[f"score_prompts_per_s_b{batch}"] = n_score / timed(lambda: llm.choice_distribution(
            prompts[:n_score], 10))
    short = [f"Describe the movie {lines[i]} in one sentence." for i in range(32)]
    new = 16 if quick else 32
    for batch in (1, 32):
        llm.batch_size = batch
        before = llm.stats.completion_tokens
        seconds = timed(lambda b=batch: llm.generate(short[:b], max_new_tokens=new))
        row[f"generate_tokens_per_s_b{batch}"] = (llm.stats.completion_tokens - before) / seconds
    targets = list(np.random.default_rng(0).integers(0, 10, 64))
    n_lora = 16 if quick else 64
    stats = llm.finetune_choices(prompts[:n_lora], targets[:n_lora], 10, epochs=1, lora_r=8,
                                 batch_size=4)
    row["lora_s_per_epoch_64"] = stats["seconds"] * 64 / n_lora
    encoder = SentenceEncoder("minilm")
    n_titles = 256 if quick else len(lines)
    encoder.encode(lines[:16])
    row["minilm_titles_per_s"] = n_titles / timed(lambda: encoder.encode(lines[:n_titles]))
    return row


def main() -> None:
    """Run the benchmark and write ``<out>/llm_layer.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/llm_layer")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = item_lines()
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "quick": args.quick, **load_times(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="florec-llm-bench-") as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            report["runs"].append(measure(threads, lines, args.quick, Path(tmp)))
            print(json.dumps(report["runs"][-1]), flush=True)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "llm_layer.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
