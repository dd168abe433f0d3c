"""A deployed round against Flower's floor, separate and fused messages, in one run.

Per setting, one loopback topology of ``florec deploy local`` (SuperLink, ServerApp SuperExec,
``--nodes`` SuperNodes each with its ClientApp SuperExec, ``--isolation process``; node i reads
only its ``florec data shard`` folder) gets, one after the other in every repeat:

- ``floor``: ``bench/deploy-floor``, a numpy ClientApp and a ServerApp with FloRec's message
  pattern (a ``query.partition``, then a train and an evaluate message per node and round) and
  FloRec's reply polling: what a round costs in Flower itself;
- ``floor-fused`` (after only): the same with one message per node and round (the train message
  carries the evaluation of the model it brings);
- ``florec``: FedAvg-MF on synthetic shards, the run ``florec deploy local`` makes;
- ``florec-fused`` (after only): the same with ``fused-evaluate=true`` (one message per node and
  round, :mod:`florec.server.fused`).

Settings: ``before`` (with ``--before-app DIR``, a FloRec folder of an older commit, under
Flower's default SuperExec poll of 1 s) and ``after`` (this tree, with ``florec deploy local``'s
:data:`florec.sim.deploy.SUPEREXEC_POLL_S`); each app is compared with the ``floor`` measured on
its own topology in the same repeat, minutes apart.

Every ClientApp message appends wall-clock stamps to ``FLOREC_PHASE_LOG`` and each SuperNode
logs when it received a message and sent the reply; ``bench/deploy_rounds_phases.py`` splits
each message into phases and writes the table::

    OMP_NUM_THREADS=1 nice -n 5 python bench/deploy_rounds.py --rounds 3 --repeats 3 \
        --out docs/results/deploy_rounds/fused --work /work/s6/logs/deploy-rounds
    python bench/deploy_rounds.py --table docs/results/deploy_rounds/fused/bench.json

writes ``OUT/bench.json`` (stamps, messages, per-phase medians, ratios) and prints the table.
``--fab-only`` instead writes the FAB sizes of the apps to ``OUT/fab.json``, and
``--shard-dataset ml-1m --data-dir DIR`` times loading a node's shard (memory-mapped
``.npy`` vs the atomic text files, sha256 checks included) into ``OUT/shard_load.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_rounds_phases import (  # noqa: E402,F401 (re-exported for the tests)
    PHASES,
    median_summary,
    read_rounds,
    split_messages,
    summarize,
    supernode_messages,
    table,
)

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "bench" / "deploy-floor"


def fab_size(app: Path) -> dict[str, int]:
    """Bytes and files of the FAB that ``flwr run`` builds from ``app``.

    Every ClientApp process of a deployment unpacks and hashes it anew.
    """
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(Path(app).resolve())
    return {"fab_bytes": len(fab), "fab_files": len(zipfile.ZipFile(io.BytesIO(fab)).namelist())}


def run_setting(label: str, poll_s: float, apps: list[tuple[str, Path]], args: Any,
                work: Path, florec_cfg: dict) -> dict:
    """Start one topology with SuperExec poll ``poll_s``; submit the apps ``--repeats`` times.

    Each repetition submits every app once, in order (the floor first), so each app's rounds
    have a floor measured minutes before them on the same topology. Each app's numbers
    are medians over the repetitions (:func:`median_summary`); ``ratio_to_floor`` is the median
    of the per-repetition ratios to that repetition's floor.
    """
    from florec.sim import deploy

    phase_log = work / f"phases-{label}.jsonl"
    os.environ["FLOREC_PHASE_LOG"] = str(phase_log)  # the SuperExecs and their ClientApps
    day0 = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    logs, reps = work / f"logs-{label}", {name: [] for name, _ in apps}
    t0 = time.time()
    with deploy.LoopbackDeployment(args.nodes, logs, shards=work / "shards",
                                   superexec_poll_s=poll_s) as dep:
        up_s = time.time() - t0
        for rep in range(args.repeats):
            for name, app in apps:
                out = work / label / f"{name}-{rep}"
                if name.startswith("florec"):
                    cfg = florec_cfg | {"out-dir": str(out)} | (
                        {"fused-evaluate": True} if name == "florec-fused" else {})
                else:
                    cfg = {"num-rounds": args.rounds, "num-nodes": args.nodes,
                           "out-dir": str(out),
                           "messages": "fused" if name == "floor-fused" else "separate"}
                load = os.getloadavg()
                start = time.time()
                if dep.submit(cfg, echo=False, app=app) != 0:
                    sys.exit(f"{label} {name} failed; logs in {logs}")
                rows = [json.loads(line) for line in phase_log.read_text().splitlines()]
                mine = [r for r in rows if r["app"] == name.split("-")[0]
                        and r["handler_start"] >= start]
                msgs = split_messages(mine, supernode_messages(logs, day0))
                reps[name].append(summarize(msgs, read_rounds(out)) | {
                    "wall_s": time.time() - start, "app": str(app), **fab_size(app),
                    "load_avg_before": load, "stamps": mine, "messages": msgs})
    floors = [r["round_s"] for r in reps["floor"]]
    results = {}
    for name, runs in reps.items():
        res = median_summary(runs)
        res["ratios_to_floor"] = [r["round_s"] / floors[i] for i, r in enumerate(runs)]
        res["ratio_to_floor"] = statistics.median(res["ratios_to_floor"])
        res["ratio_of_medians"] = res["round_s"] / statistics.median(floors)
        results[name] = res
    return {"superexec_poll_s": poll_s, "deploy_up_s": up_s, "load_avg_after": os.getloadavg(),
            "repeats": args.repeats, "apps": results}


def shard_load(dataset: str, data_dir: str, nodes: int, reps: int = 5) -> dict:
    """Seconds to load node 0's shard of ``dataset``: memory-mapped ``.npy`` vs atomic files.

    Both include the sha256 check of every file of the shard; the text path is the same folder
    with the ``.npy`` files left out of its manifest (a shard written before them).
    """
    import shutil

    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.shard_files import MANIFEST, load_shard, write_shards
    from florec.recdata.splits import PARTS

    cfg = parse_run_config({"dataset": dataset, "data-dir": data_dir, "num-nodes": nodes})
    work = Path(tempfile.mkdtemp(prefix="shard-load-"))
    try:
        npy = write_shards(cfg, work / "shards")[0]
        text = work / "text"
        shutil.copytree(npy, text)
        meta = json.loads((text / MANIFEST).read_text())
        for part in PARTS:
            name = f"{meta['name']}.{part}.npy"
            (text / name).unlink()
            del meta["files"][name]
        (text / MANIFEST).write_text(json.dumps(meta))
        out: dict[str, Any] = {"dataset": dataset, "nodes": nodes,
                               "train_rows": int(len(load_shard(npy, cfg).split.parts["train"][0]))}
        for label, folder in (("npy", npy), ("text", text)):
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                shard = load_shard(folder, cfg)
                int(shard.split.parts["train"][1].sum())  # touch every mapped row once
                times.append(time.perf_counter() - t)
            out[f"{label}_s"] = statistics.median(times)
        out["files_mb"] = sum(f.stat().st_size for f in npy.iterdir()) / 2**20
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Per setting (before, after): start the topology, submit each app, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1,
                    help="submit the floor and FloRec this many times, alternating; medians")
    ap.add_argument("--no-fused", action="store_true",
                    help="leave out the fused apps (one message per node and round)")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--before-app", type=Path, default=None,
                    help="a FloRec folder to measure first, with Flower's default 1 s SuperExec "
                         "poll (e.g. a copy of an older commit)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "deploy_rounds")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the shards and every process's log (default: a new temp)")
    ap.add_argument("--shard-dataset", default=None,
                    help="instead: time loading node 0's shard of this dataset (.npy vs text), "
                         "write OUT/shard_load.json")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--fab-only", action="store_true",
                    help="instead: write the FAB sizes of the apps to OUT/fab.json")
    ap.add_argument("--table", type=Path, default=None,
                    help="instead: print the table of this bench.json")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if args.fab_only:
        apps = {"floor": FLOOR, "florec": ROOT} | (
            {"florec-before": args.before_app} if args.before_app else {})
        res = {name: fab_size(app) | {"app": str(app)} for name, app in apps.items()}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fab.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res))
        return
    if args.shard_dataset:
        res = shard_load(args.shard_dataset, args.data_dir, args.nodes) | {
            "load_avg": os.getloadavg(), "omp": os.environ.get("OMP_NUM_THREADS")}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shard_load.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res))
        return

    from florec.recdata.runconfig import parse_run_config
    from florec.recdata.shard_files import write_shards
    from florec.sim import deploy

    florec_cfg = {"dataset": "synthetic", "synthetic-users": args.users,
                  "synthetic-items": args.items, "synthetic-interactions": 20, "dim": 16,
                  "num-rounds": args.rounds, "num-nodes": args.nodes}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="deploy-rounds-", dir=args.work and str(args.work)))
    write_shards(parse_run_config(florec_cfg), work / "shards")
    settings = {}
    if args.before_app is not None:
        settings["before"] = run_setting("before", 1.0, [("floor", FLOOR),
                                                         ("florec", args.before_app)],
                                         args, work, florec_cfg)
    apps = [("floor", FLOOR), ("floor-fused", FLOOR), ("florec", ROOT), ("florec-fused", ROOT)]
    settings["after"] = run_setting(
        "after", deploy.SUPEREXEC_POLL_S,
        [(n, a) for n, a in apps if not (args.no_fused and n.endswith("-fused"))], args, work,
        florec_cfg)
    report = {"rounds": args.rounds, "nodes": args.nodes, "users": args.users,
              "items": args.items, "florec_config": florec_cfg,
              "env": {"python": platform.python_version(), "cpus": os.cpu_count(),
                      "load_avg_end": os.getloadavg(), "omp": os.environ.get("OMP_NUM_THREADS"),
                      "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True,
                                               cwd=ROOT).stdout.strip()},
              "settings": settings}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
