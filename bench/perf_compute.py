"""Local training compute of a full FedAvg-MF round against one central MF-BPR epoch.

For each dataset, :func:`florec.sim.perf.compute_ratio` times, alternately in this one process,
one central epoch (Adam, batches of 1,024) and one round of every user's local training
(``users-per-node`` users per bucket, one local epoch, batches of 64, Adam) with the current
trainer and with the trainer of ``--baseline`` (``client/trainers/bpr_embedding.py`` read from
that git commit, run against the current tree), so before and after are measured side by side.
Ratios, not seconds, are the result: the machine may be shared.

Run: OMP_NUM_THREADS=1 python bench/perf_compute.py --datasets ml-1m --baseline 4598cc8 \
    --out docs/results/perf/compute.json

``--perf-table FILE...`` prints docs/scale.md's framework-cost table from ``florec perf --json``
rows (:func:`perf_table`).

SASRec (issue 17.4): ``--seq-dataset ml-100k --seq-users N`` also times a central epoch with the
packed ``represent`` against the full encoder (:func:`seq_epoch_ratio`, wall and CPU time);
``--seq-profile FILE`` writes the torch profile of one epoch; ``--seq-metrics E --seq-variant
before|after`` runs E epochs for a metric comparison, ``--seq-table DIR`` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.client.trainers.bpr_embedding import local_update
from florec.sim.perf import PERF_DEFAULTS, compute_ratio, framework_seconds, save_measurement

TRAINER = "client/trainers/bpr_embedding.py"


def trainer_at(commit: str) -> Callable[..., Any]:
    """``local_update`` of :data:`TRAINER` as it was at ``commit`` (imports resolve to now)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:{TRAINER}"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"bpr_embedding_at_{commit}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"{commit}:{TRAINER}", "exec"), module.__dict__)  # noqa: S102
    return module.local_update


def seq_windows(dataset: str, users: int) -> tuple[Any, np.ndarray]:
    """The loo split of ``dataset`` and the train windows (L=50) of its first ``users`` (0: all)."""
    from florec.recdata.sequences import UserSequences
    from florec.recdata.store import get_split

    split, _ = get_split(dataset, "loo", 0)
    n = users or split.n_users
    return split, UserSequences.from_split(split).inputs(np.arange(n), "train", 50)


def seq_epoch(split: Any, windows: np.ndarray, before: bool) -> tuple[float, float, float]:
    """(wall s, CPU s, mean train loss) of one central SASRec epoch from a fresh seeded model.

    The bench's SASRec settings (``bench/sequential.toml``: d=64, L=50, 2 heads, 2 blocks,
    dropout 0.5, full softmax, Adam 1e-3, batches of 256); ``before`` is the pass before issue
    17.4: the model's ``represent`` is ``encode(seq)[:, -1]`` (every position of every block)
    and its dropout layers are :class:`torch.nn.Dropout`.
    """
    from florec.client.trainers.sequential import make_optimizers, train_epoch
    from florec.models.registry import build_sequential_model

    model = build_sequential_model("sasrec", split.n_items, dropout=0.5, layers=2)
    if before:
        from florec.models.seq_layers import Dropout  # (so --seq-profile runs on older trees)

        model.represent = lambda seq: model.encode(seq)[:, -1]
        for module in model.modules():
            if isinstance(module, Dropout):
                module.__class__ = torch.nn.Dropout
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = train_epoch(model, make_optimizers(model, 1e-3), windows, split.n_items,
                        np.random.default_rng(0), 256, "ce")
    return (time.perf_counter() - t0, time.process_time() - c0,
            stats.means()["train-loss"])


def seq_epoch_ratio(dataset: str, users: int, reps: int) -> dict[str, Any]:
    """A central SASRec epoch with :meth:`SASRec.represent` against the full-encoder path.

    Both variants (:func:`seq_epoch`) train on the windows of the first ``users`` users (all if
    0), alternately, ``reps`` times. Reports the median wall-clock and CPU-time (process time,
    less sensitive to other processes on a shared box) ratios.
    """
    split, windows = seq_windows(dataset, users)
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    losses: dict[str, float] = {}
    for _ in range(reps):
        for name in ("before", "after"):
            wall, cpu, losses[name] = seq_epoch(split, windows, name == "before")
            times[name].append((wall, cpu))
    before, after = np.asarray(times["before"]), np.asarray(times["after"])
    ratios = np.median(before / after, axis=0)
    return {"dataset": dataset, "model": "sasrec", "users": len(windows),
            "positions": int((windows > 0).sum()),
            "before_epoch_s": float(np.median(before[:, 0])),
            "after_epoch_s": float(np.median(after[:, 0])),
            "before_over_after": float(ratios[0]),
            "before_epoch_cpu_s": float(np.median(before[:, 1])),
            "after_epoch_cpu_s": float(np.median(after[:, 1])),
            "before_over_after_cpu": float(ratios[1]), "reps": reps,
            "train_loss_before": losses["before"], "train_loss_after": losses["after"]}


def seq_profile(dataset: str, users: int, out: Path, top: int = 25) -> None:
    """Torch-profile one central SASRec epoch (after a warm-up epoch); write the top ops to ``out``.

    The ``represent`` of the installed tree (the ``after`` variant of :func:`seq_epoch`), on the
    windows of the first ``users`` users; ops sorted by self CPU time.
    """
    from torch.profiler import ProfilerActivity, profile

    split, windows = seq_windows(dataset, users)
    seq_epoch(split, windows, False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, cpu, _ = seq_epoch(split, windows, False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"SASRec epoch on {dataset}, first {len(windows)} users "
                   f"({int((windows > 0).sum())} positions), 1 thread, profiled: {wall:.2f} s "
                   f"wall, {cpu:.2f} s CPU, load {os.getloadavg()[0]:.1f}\n{table}\n")


def seq_metrics(dataset: str, epochs: int, variant: str, out: Path) -> dict[str, Any]:
    """A central SASRec run (bench settings, seed 0) with the ``before`` or ``after`` encoder.

    Writes the run folder (``rounds.jsonl`` has every epoch's validation metrics) under ``out``
    and returns its ``results.json`` entry: the two variants' metrics can then be compared
    epoch by epoch.
    """
    from florec.models.sasrec import SASRec
    from florec.models.seq_layers import Dropout, SequentialRecommender
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central_seq import run_central_seq

    if variant not in ("before", "after"):
        raise SystemExit(f"--seq-variant {variant}: use before or after")
    if variant == "before":  # the pass before issue 17.4 (see seq_epoch)
        SASRec.represent = SequentialRecommender.represent  # encode(seq)[:, -1]
        Dropout.forward = torch.nn.Dropout.forward
    cfg = parse_run_config({"dataset": dataset, "model": "sasrec", "split": "loo", "dim": 64,
                            "max-seq-len": 50, "heads": 2, "seq-layers": 2, "dropout": 0.5,
                            "seq-loss": "ce", "lr": 0.001, "ks": "10,20", "seed": 0})
    return run_central_seq(cfg, epochs, 256, out / variant)


def seq_metrics_table(root: Path, metrics: tuple[str, ...] = ("hr@10", "ndcg@10"),
                      before_root: Path | None = None) -> str:
    """Markdown: validation metrics per epoch of ``root/before`` and ``root/after`` side by side.

    Reads each run's ``rounds.jsonl`` (written by :func:`seq_metrics`); ``before_root``, if
    given, holds the ``before`` run instead of ``root``.
    """
    roots = {"before": before_root or root, "after": root}
    runs = {v: [json.loads(x) for x in (roots[v] / v / "rounds.jsonl").read_text().splitlines()
                if x.strip()] for v in ("before", "after")}
    head = ["epoch"] + [f"{m} {v}" for m in metrics for v in ("before", "after")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in zip(runs["before"], runs["after"], strict=False):
        cells = [str(a["round"])] + [f"{r['valid'][m]:.4f}" for m in metrics for r in (a, b)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: columns of :func:`perf_table`: header and how a row fills it
PERF_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("dataset", lambda r: r["dataset"]),
    ("aggregation", lambda r: r["algorithm"].rsplit("-", 1)[-1]),
    ("users", lambda r: f"{r['population']:,}"),
    ("cohort", lambda r: f"{r['cohort']:g}"),
    ("users/node", lambda r: str(r["bucket"])),
    ("nodes", lambda r: str(r["nodes"])),
    ("s/round (flwr + Ray)", lambda r: f"{r['s_per_round']:.2f}"),
    ("s/round in process (serial)", lambda r: f"{r['s_per_round_in_process']:.2f}"),
    ("framework s/round", lambda r: "{:.2f}".format(framework_seconds(
        r["s_per_round"], r["s_per_round_in_process"], r["workers"]))),
    ("framework ms per user update", lambda r: f"{r['framework_ms_per_update']:.2f}"),
    ("local round / central epoch",
     lambda r: f"{r['local_round_over_central_epoch']:.2f}x"
     if "local_round_over_central_epoch" in r else "-"),
    ("peak PSS MB", lambda r: f"{r['peak_pss_mb']:.0f}"),
    ("MB/round", lambda r: f"{r['bytes_per_round'] / 2**20:.1f}"),
    ("load (1 min, start-end)",
     lambda r: "-".join(f"{x:.1f}" for x in r["load_avg_1m"]) if "load_avg_1m" in r else "?"),
]


def perf_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``florec perf --json`` rows (:func:`florec.sim.perf.measure`).

    ``framework s/round`` = s/round under Flower - in-process s/round / ``workers`` (the
    round's time not explained by the nodes' compute spread over the Ray actors).
    """
    head = [name for name, _ in PERF_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r) for _, cell in PERF_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    """Measure each dataset and write one JSON object with a row per dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-1m")
    parser.add_argument("--users-per-node", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", default="", help="git commit of the 'before' trainer")
    parser.add_argument("--seq-dataset", default="", help="also time a SASRec epoch on it")
    parser.add_argument("--seq-users", type=int, default=0, help="its first N users (0: all)")
    parser.add_argument("--seq-metrics", type=int, default=0,
                        help="instead: a central SASRec run of this many epochs on --seq-dataset")
    parser.add_argument("--seq-variant", default="after", help="before or after")
    parser.add_argument("--seq-profile", type=Path, default=None,
                        help="instead: torch-profile one SASRec epoch into this text file")
    parser.add_argument("--seq-table", type=Path, default=None,
                        help="instead: print the before/after metric table of this folder")
    parser.add_argument("--seq-table-before", type=Path, default=None,
                        help="the folder of --seq-table's 'before' run (default: the same)")
    parser.add_argument("--perf-table", type=Path, nargs="*", default=None,
                        help="instead: print the markdown table of these florec perf --json files")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.perf_table is not None:
        print(perf_table([json.loads(line) for path in args.perf_table
                          for line in path.read_text().splitlines() if line.strip()]))
        return
    if args.seq_table is not None:
        print(seq_metrics_table(args.seq_table, before_root=args.seq_table_before))
        return
    if args.seq_profile is not None:
        seq_profile(args.seq_dataset, args.seq_users, args.seq_profile)
        return
    if args.seq_metrics:
        entry = seq_metrics(args.seq_dataset, args.seq_metrics, args.seq_variant, args.out)
        print(json.dumps(entry, default=str), flush=True)
        return
    trainers = {"local": local_update}
    if args.baseline:
        trainers["before"] = trainer_at(args.baseline)
    rows = []
    for dataset in [d for d in args.datasets.split(",") if d]:
        cfg = PERF_DEFAULTS | {"dataset": dataset, "users-per-node": args.users_per_node}
        row = {"dataset": dataset, "users_per_node": args.users_per_node}
        row |= compute_ratio(cfg, args.reps, trainers=trainers)
        print(json.dumps(row), flush=True)
        rows.append(row)
    seq = []
    if args.seq_dataset:
        seq.append(seq_epoch_ratio(args.seq_dataset, args.seq_users, args.reps))
        print(json.dumps(seq[-1]), flush=True)
    result = {"command": "OMP_NUM_THREADS=1 python bench/perf_compute.py "
                         f"--datasets '{args.datasets}' --users-per-node {args.users_per_node} "
                         f"--reps {args.reps} --baseline '{args.baseline}' "
                         f"--seq-dataset '{args.seq_dataset}' --seq-users {args.seq_users}",
              "seq_rows": seq,
              "baseline": args.baseline, "config": PERF_DEFAULTS,
              "load_avg_1m_at_start": os.getloadavg()[0], "rows": rows}
    save_measurement(args.out, result)


if __name__ == "__main__":
    main()
