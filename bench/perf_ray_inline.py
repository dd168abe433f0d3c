r"""A full FedAvg-MF round under `flwr run` + Ray with Ray's default object path and inline.

Ray passes task arguments and results above ``max_direct_call_object_size`` (100 KiB by
default) through its shared-memory object store; FloRec raises it to
:data:`florec.sim.flower.RAY_DIRECT_CALL_BYTES` so a 1 MB ML-1M message goes inline over gRPC.
This script runs ``florec perf`` (one cell) alternately with each value, so both see the same
machine load, appends one JSON row per run (``ray_max_direct_call_object_size`` added) and
prints the medians and the median of the pairs' ratios::

    OMP_NUM_THREADS=1 FLOREC_DATA_DIR=DATA python bench/perf_ray_inline.py --pairs 3 \
        --out docs/results/perf/ray_inline/ab_ml1m.jsonl
    python bench/perf_ray_inline.py --table docs/results/perf/ray_inline/ab_ml1m.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

KEY = "ray_max_direct_call_object_size"
RAY_DEFAULT = 100 * 1024


def perf_command(dataset: str, rounds: int) -> list[str]:
    """``florec perf`` on one cell: all users of ``dataset``, buckets of 100, JSON output."""
    return [sys.executable, "-m", "florec.sim.cli", "perf", "--datasets", dataset, "--cohorts",
            "1.0", "--buckets", "100", "--rounds", str(rounds), "--json"]


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of a ``.jsonl`` file."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_once(size: int, dataset: str, rounds: int) -> dict:
    """One :func:`perf_command` cell with Ray's inline limit ``size``."""
    env = {**os.environ, "RAY_max_direct_call_object_size": str(size)}
    out = subprocess.run(perf_command(dataset, rounds), env=env, capture_output=True, text=True,
                         check=True).stdout
    row = next(json.loads(x) for x in out.splitlines() if x.startswith("{"))
    return {KEY: size} | row


def table(rows: list[dict]) -> str:
    """Markdown: medians per setting and the median after/before ratio of consecutive pairs."""
    sizes = sorted({r[KEY] for r in rows})
    before, after = sizes[0], sizes[-1]
    by = {s: [r for r in rows if r[KEY] == s] for s in sizes}
    pairs = list(zip(by[before], by[after], strict=False))
    lines = ["| per round | Ray default (100 KiB) | inline up to "
             f"{after >> 20} MiB | inline / default (median of {len(pairs)} pairs) |",
             "|---|---|---|---|"]
    for key, label, unit in (("s_per_round", "flwr + Ray round", "s"),
                             ("s_per_round_in_process", "the same round in process", "s"),
                             ("peak_pss_mb", "peak PSS of the process tree", "MB"),
                             ("peak_mem_mb", "peak RSS sum", "MB")):
        med = [statistics.median(r[key] for r in by[s]) for s in (before, after)]
        ratio = statistics.median(b[key] / a[key] for a, b in pairs)
        lines.append(f"| {label} | {med[0]:.2f} {unit} | {med[1]:.2f} {unit} | {ratio:.3f}x |")
    loads = [x for r in rows for x in r["load_avg_1m"]]
    lines.append(f"\n{len(rows)} runs, {rows[0]['dataset']}, 1-minute load "
                 f"{min(loads):.2f}-{max(loads):.2f}")
    return "\n".join(lines)


def main() -> None:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--inline-bytes", type=int, default=8 << 20)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path, help="print the table of this file and stop")
    args = ap.parse_args()
    if args.table:
        print(table(read_rows(args.table)))
        return
    rows = []
    for _ in range(args.pairs):
        for size in (RAY_DEFAULT, args.inline_bytes):
            rows.append(run_once(size, args.dataset, args.rounds))
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
