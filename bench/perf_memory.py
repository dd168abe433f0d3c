"""Memory of a real `florec sim` run, per process, at its peak (issue 17, part 2).

Starts ``python -m florec.sim.cli sim`` (FedAvg-MF with `florec perf`'s settings: d=64, one
local epoch, evaluation at the last round) as a subprocess and samples every process of its
tree every ``--every`` seconds with :class:`florec.sim.memory.ProcessTreeMemory`: PSS (and
RSS, USS) of the driver, SuperLink, SuperExec, ``flwr-simulation``, Ray's GCS, raylet, agents,
workers and actors; Ray's object store is counted in the PSS of the processes that map it, and
``/dev/shm`` growth is reported beside. Writes one JSON object (``--out``) with the peak sums,
the peak sample by role and by process, the PSS/RSS series, the run's test metrics (to check
that a memory setting leaves results unchanged), the machine's load and the settings.

Examples
--------
OMP_NUM_THREADS=1 python bench/perf_memory.py --dataset ml-1m --bucket 100 --rounds 2 \
    --out docs/results/memory/ml1m_b100.json
OMP_NUM_THREADS=1 python bench/perf_memory.py --dataset synthetic --users 18513 --bucket 100 \
    --out docs/results/memory/synthetic_18513.json
python bench/perf_memory.py --table docs/results/memory    # the markdown tables of docs/scale.md
OMP_NUM_THREADS=1 python bench/perf_memory.py --dataset ml-1m --bucket 100 \
    --before-app /tmp/before/florec --out docs/results/memory/cache/ml1m_6040.json
python bench/perf_memory.py --compare docs/results/memory/cache   # before/after, side by side

``--before-app DIR/florec`` (a copy of an older commit: ``git archive <commit> | tar -x -C
DIR/florec``, with the commit in ``DIR/COMMIT``) measures that tree first and this one right
after it, with the same settings, into ``before/`` and ``after/`` beside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TAG = "FLOREC_MEMORY_TAG"


def run_config(dataset: str, users: int, bucket: int, cohort: float, rounds: int,
               extra: list[str]) -> list[str]:
    """`-c` overrides of the measured run: `florec perf`'s FedAvg-MF cell plus ``extra``."""
    from florec.sim.perf import PerfCell

    cfg = PerfCell(dataset, users, cohort, bucket).run_config(rounds)
    cfg.pop("num-rounds")
    from florec.sim.flower_config import toml_value

    return [" ".join(f"{k}={toml_value(v)}" for k, v in cfg.items()), *extra]


def app_env(env: dict[str, str], app: Path | None) -> tuple[dict[str, str], Path]:
    """The environment and working folder that run the FloRec folder ``app`` (None: this one).

    ``app`` is a copy of the repository root (e.g. ``git archive <commit>`` unpacked into
    ``DIR/florec``): its parent goes first on ``PYTHONPATH``, ahead of an editable install, so
    ``python -m florec.sim.cli`` imports it and ``flwr run`` ships it as the FAB.
    """
    if app is None:
        return env, ROOT
    app = app.resolve()
    if app.name != "florec" or not (app / "__init__.py").is_file():
        raise SystemExit(f"--before-app {app} is not a FloRec folder named florec; unpack a "
                         "commit there: mkdir -p DIR/florec && git archive HEAD | tar -x -C "
                         "DIR/florec")
    path = os.pathsep.join(x for x in (str(app.parent), env.get("PYTHONPATH", "")) if x)
    return {**env, "PYTHONPATH": path}, app.parent


def measure(args: argparse.Namespace, app: Path | None = None, lean: bool = False
            ) -> dict[str, Any]:
    """Run one `florec sim` (of the FloRec folder ``app``, default this tree) under the sampler.

    With ``lean`` the run goes to a lean Ray head of its own
    (:func:`florec.sim.ray_cluster.local_head`, ``--ray-address``), whose processes carry the
    run's tag and are counted. Returns the JSON row.
    """
    import contextlib
    import math

    from florec.sim.memory import ProcessTreeMemory
    from florec.sim.ray_cluster import local_head

    tag = (TAG, uuid.uuid4().hex)
    env = {**os.environ, TAG: tag[1], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for pair in args.env:
        key, _, value = pair.partition("=")
        env[key] = value
    env, cwd = app_env(env, app)
    overrides = run_config(args.dataset, args.users, args.bucket, args.cohort, args.rounds,
                           args.config)
    with tempfile.TemporaryDirectory(prefix="perf-memory-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "florec.sim.cli", "sim", "--dataset", args.dataset,
               "--rounds", str(args.rounds), "--out", str(out)]
        for c in overrides:
            cmd += ["-c", c]
        nodes = math.ceil(args.users * args.cohort / args.bucket) if args.dataset == "synthetic" \
            else os.cpu_count() or 1  # one actor per node, at most one per CPU
        cpus = max(1, min(os.cpu_count() or 1, nodes))
        load0 = os.getloadavg()
        t0 = time.monotonic()
        with local_head(cpus, env) if lean else contextlib.nullcontext() as address:
            proc = subprocess.Popen([*cmd, *(["--ray-address", address] if address else [])],
                                    env=env, cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            with ProcessTreeMemory(proc.pid, tag, every_s=args.every) as mem:
                log, _ = proc.communicate()
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"florec sim failed (exit {proc.returncode}):\n{log[-3000:]}")
        results = json.loads((out / "results.json").read_text())
        rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines() if x]
    run = results["runs"][0]
    return {"label": args.label, "dataset": args.dataset,
            "users": int(rounds[0]["train"].get("num-users", args.users)) if args.cohort >= 1
            else args.users, "bucket": args.bucket, "cohort": args.cohort,
            "rounds": args.rounds, "overrides": overrides, "env": args.env, "lean_ray": lean,
            **mem.report(), "test": run.get("metrics", {}), "wall_s": round(wall, 1),
            "s_per_round": [round(float(r["seconds"]), 2) for r in rounds],
            "loadavg_before": [round(x, 2) for x in load0],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "threads": int(env["OMP_NUM_THREADS"]), "cpus": os.cpu_count(),
            "series": mem.series,
            "command": "python bench/perf_memory.py " + " ".join(args.argv),
            "app": str(app or ROOT), "commit": app_commit(app),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def app_commit(app: Path | None) -> str:
    """The commit of this tree (``git rev-parse``), or of a copy from its ``../COMMIT`` file."""
    if app is not None:
        stamp = app.resolve().parent / "COMMIT"
        return stamp.read_text().strip() if stamp.is_file() else ""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


TIMING_CHILD = """
import json, sys
from florec.sim.perf import compute_ratio
print(json.dumps(compute_ratio(json.loads(sys.argv[1]), reps=1)))
"""


def env_timing(args: argparse.Namespace) -> dict[str, Any]:
    """Local-training seconds with and without the ``--env`` variables, alternated.

    Each repetition starts one process without them and one with them (glibc reads its
    ``MALLOC_*`` variables at start), each timing one central epoch and one round of every
    user's local training (:func:`florec.sim.perf.compute_ratio`, one repetition); medians over
    ``--timing`` repetitions.
    """
    import statistics

    from florec.sim.perf import PerfCell

    extra = dict(pair.partition("=")[::2] for pair in args.env)
    cfg = PerfCell(args.dataset, args.users, 1.0, args.bucket).run_config(1)
    base = {k: v for k, v in os.environ.items() if k not in extra}
    base["OMP_NUM_THREADS"] = base.get("OMP_NUM_THREADS", "1")
    runs: dict[str, list[dict[str, Any]]] = {"defaults": [], "env": []}
    for _ in range(args.timing):
        for name, env in (("defaults", base), ("env", base | extra)):
            out = subprocess.run([sys.executable, "-c", TIMING_CHILD, json.dumps(cfg)], env=env,
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    row: dict[str, Any] = {"dataset": args.dataset, "users": args.users, "bucket": args.bucket,
                           "reps": args.timing, "env": extra, "runs": runs}
    for key in ("central_epoch_s", "local_round_s"):
        d = statistics.median(r[key] for r in runs["defaults"])
        e = statistics.median(r[key] for r in runs["env"])
        row[key] = {"defaults": d, "env": e, "env_over_defaults": e / d}
    return row | {"command": "python bench/perf_memory.py " + " ".join(args.argv),
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def role_sums(processes: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """``{role: (processes, PSS MiB)}`` of a peak sample, roles from each command line."""
    from florec.sim.memory import process_role

    out: dict[str, tuple[int, float]] = {}
    for p in processes:
        n, mb = out.get(process_role(p["cmd"]), (0, 0.0))
        out[process_role(p["cmd"])] = (n + 1, mb + p["pss_mb"])
    return out


def table(folder: Path) -> str:
    """Markdown: one row per JSON file of ``folder`` (peaks, users, load), then PSS by role."""
    paths = sorted(folder.glob("*.json"), key=lambda p: (json.loads(p.read_text())["users"],
                                                         p.name))
    rows = [json.loads(p.read_text()) for p in paths]
    lines = ["| file | label | dataset | users | users/node | peak PSS MB | peak RSS-sum MB "
             "| /dev/shm MB | test ndcg@10 | load (1 min) |", "|---" * 10 + "|"]
    for path, r in zip(paths, rows, strict=True):
        lines.append(f"| {path.name} | {r['label']} | {r['dataset']} | {r['users']:,} | "
                     f"{r['bucket']} | {r['peak_pss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_shm_mb']:.0f} | {r['test'].get('ndcg@10', float('nan')):.6f} | "
                     f"{r['loadavg_before'][0]:.1f} |")
    by_role = [role_sums(r["processes"]) for r in rows]  # today's roles, for older files too
    roles = sorted({k for b in by_role for k in b}, key=lambda k: -max(b.get(k, (0, 0))[1]
                                                                        for b in by_role))
    lines += ["", "| file | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for path, b in zip(paths, by_role, strict=True):
        cells = [f"{b[k][1]:.0f} ({b[k][0]})" if k in b else "-" for k in roles]
        lines.append(f"| {path.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(folder: Path) -> str:
    """Markdown: ``before/`` against ``after/`` file by file (PSS, RSS sum, actors, ratio)."""
    lines = ["| point | users | before: peak PSS MB | after: peak PSS MB | after / before | "
             "before: actors PSS MB | after: actors PSS MB | before: RSS sum | after: RSS sum | "
             "after, lean Ray head: peak PSS MB |", "|---" * 10 + "|"]
    for after_path in sorted((folder / "after").glob("*.json"),
                             key=lambda p: json.loads(p.read_text())["users"]):
        before_path = folder / "before" / after_path.name
        if not before_path.is_file():
            continue
        b, a = (json.loads(x.read_text()) for x in (before_path, after_path))
        lean_path = folder / "after-lean-ray" / after_path.name
        lean = json.loads(lean_path.read_text())["peak_pss_mb"] if lean_path.is_file() else None
        actor_b, actor_a = (role_sums(r["processes"]).get("ray-actor", (0, 0.0))[1]
                            for r in (b, a))
        lines.append(f"| {after_path.stem} | {a['users']:,} | {b['peak_pss_mb']:.0f} | "
                     f"{a['peak_pss_mb']:.0f} | {a['peak_pss_mb'] / b['peak_pss_mb']:.2f} | "
                     f"{actor_b:.0f} | {actor_a:.0f} | {b['peak_rss_mb']:.0f} | "
                     f"{a['peak_rss_mb']:.0f} | {'-' if lean is None else f'{lean:.0f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: one measurement (``--out``) or the tables of a folder (``--table``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--users", type=int, default=6040, help="synthetic population")
    p.add_argument("--bucket", type=int, default=100, help="users per node")
    p.add_argument("--cohort", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    p.add_argument("-c", "--config", action="append", default=[], help="run-config overrides")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the run")
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="print the tables of this results folder")
    p.add_argument("--before-app", type=Path, default=None,
                   help="also measure this FloRec folder (a copy of an older commit, named "
                        "florec) right before this tree; --out's folder gets before/ and after/")
    p.add_argument("--lean-ray", action="store_true",
                   help="run on a lean Ray head of its own (no dashboard, autoscaler monitor or "
                        "log monitor; florec sim --ray-address); with --before-app, a third "
                        "measurement into after-lean-ray/")
    p.add_argument("--compare", type=Path,
                   help="print the before/after table of a folder written with --before-app")
    p.add_argument("--timing", type=int, default=0,
                   help="instead: time local training with and without the --env variables, "
                        "this many alternated repetitions")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.table:
        print(table(args.table))
        return
    if args.compare:
        print(compare(args.compare))
        return
    if args.before_app is not None:
        if not args.out:
            raise SystemExit("--before-app needs --out DIR/NAME.json (writes DIR/before/NAME.json "
                             "and DIR/after/NAME.json)")
        runs = [("before", args.before_app, False), ("after", None, False)]
        for label, app, lean in runs + ([("after-lean-ray", None, True)] if args.lean_ray
                                        else []):
            row = measure(args, app, lean) | {"label": label}
            path = args.out.parent / label / args.out.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=1) + "\n")
            print(json.dumps({k: row[k] for k in ("label", "users", "peak_pss_mb",
                                                  "peak_rss_mb", "wall_s")}))
        return
    row = env_timing(args) if args.timing else measure(args, lean=args.lean_ray)
    text = json.dumps(row, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.timing:
        print(json.dumps({k: row[k] for k in ("central_epoch_s", "local_round_s")}))
        return
    summary = {k: row[k] for k in ("label", "users", "peak_pss_mb", "peak_rss_mb",
                                   "peak_shm_mb", "wall_s", "test")}
    print(json.dumps(summary | {"by_role": {k: (v["n"], v["pss_mb"])
                                            for k, v in row["by_role"].items()}}))


if __name__ == "__main__":
    main()
