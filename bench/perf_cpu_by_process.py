r"""CPU seconds per second of each process role during ``florec perf``'s Flower rounds.

Runs one ``florec perf`` cell as a child and samples the CPU time (user + system) of every
process in its tree once a second (one JSON row per sample); ``--table`` prints each role's
mean CPU-seconds per second over the samples in which the ClientApp actors were busy (the
rounds), which shows who shares the cores with the actors::

    OMP_NUM_THREADS=1 FLOREC_DATA_DIR=DATA python bench/perf_cpu_by_process.py \
        --out docs/results/perf/ray_inline/cpu_by_process_ml1m.jsonl
    python bench/perf_cpu_by_process.py --table \
        docs/results/perf/ray_inline/cpu_by_process_ml1m.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_ray_inline import perf_command, read_rows  # noqa: E402 (bench/perf_ray_inline.py)

ROLES = ("ray::ClientAppActor", "flwr-simulation", "raylet", "gcs_server", "flower-superlink",
         "flower-superexec", "dashboard", "perf --datasets")  # the last: the perf driver


def role(cmd: str) -> str:
    """The role of a command line (its first match in :data:`ROLES`, else ``other``)."""
    return next((r for r in ROLES if r in cmd), "other")


def sample(root: psutil.Process) -> dict[str, list]:
    """``{pid: [command (90 chars), CPU seconds]}`` of ``root`` and its descendants."""
    rows = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            rows[str(p.pid)] = [" ".join(p.cmdline())[:90] or p.name(), t.user + t.system]
        except psutil.Error:
            pass
    return rows


def table(rows: list[dict], busy: float = 0.5) -> str:
    """Mean CPU-s/s per role over the intervals in which the actors used more than ``busy``."""
    rates: dict[str, list[float]] = {}
    for a, b in zip(rows, rows[1:], strict=False):
        dt = b["t"] - a["t"]
        per: dict[str, float] = {}
        for pid, (cmd, cpu) in b["procs"].items():
            per[role(cmd)] = per.get(role(cmd), 0.0) + cpu - a["procs"].get(pid, [cmd, cpu])[1]
        if per.get("ray::ClientAppActor", 0.0) / dt > busy:
            for k, v in per.items():
                rates.setdefault(k, []).append(v / dt)
    n = len(rates.get("ray::ClientAppActor", []))
    lines = ["| process role | CPU-seconds per second during the rounds |", "|---|---|"]
    for k, v in sorted(rates.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"| {k} | {sum(v) / n:.3f} |")
    lines.append(f"\n{n} one-second samples with busy actors")
    return "\n".join(lines)


def main() -> None:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path, help="print the table of this file and stop")
    args = ap.parse_args()
    if args.table:
        print(table(read_rows(args.table)))
        return
    child = subprocess.Popen(perf_command(args.dataset, args.rounds), stdout=subprocess.DEVNULL)
    root, rows = psutil.Process(child.pid), []
    while child.poll() is None:
        rows.append({"t": time.time(), "procs": sample(root)})
        time.sleep(1.0)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))


if __name__ == "__main__":
    main()
