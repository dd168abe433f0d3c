"""A deployed round against Flower's floor, phase by phase, before and after, in one run.

Per setting, one loopback topology of ``florec deploy local`` (SuperLink, ServerApp SuperExec,
``--nodes`` SuperNodes each with its ClientApp SuperExec, ``--isolation process``; node i reads
only its ``florec data shard`` folder) gets, one after the other:

- ``floor``: ``bench/deploy-floor``, a numpy ClientApp and a ServerApp with FloRec's message
  pattern (a ``query.partition``, then a train and an evaluate message per node and round) and
  FloRec's reply polling: what a round costs in Flower itself;
- ``floor-fused`` (after only): the same with one message per node and round (the train message
  carries the evaluation of the model it brings);
- ``florec``: FedAvg-MF on synthetic shards, the run ``florec deploy local`` makes.

Settings: ``before`` (with ``--before-app DIR``, a FloRec folder of an older commit, under
Flower's default SuperExec poll of 1 s) and ``after`` (this tree, with ``florec deploy local``'s
:data:`florec.sim.deploy.SUPEREXEC_POLL_S`); each FloRec is compared with the floor measured on
its own topology, minutes apart.

Every ClientApp message appends wall-clock stamps to ``FLOREC_PHASE_LOG`` and each SuperNode
logs when it received a message and sent the reply, so a message splits into: process start
(SuperNode received -> the app module starts importing: the SuperExec's task poll, the new
``flwr-clientapp`` process, Python, Flower, unpacking and hashing the FAB), imports (the app
module and the method's node module), data load, work, hand-off (handler returned -> the
SuperNode sends the reply). A round's wall time less its messages on the slowest node is
polling and the server (the SuperNode's fixed 3 s idle poll, aggregation)::

    OMP_NUM_THREADS=1 python bench/deploy_rounds.py --rounds 3 --before-app /tmp/florec-before
    OMP_NUM_THREADS=1 python bench/deploy_rounds.py --rounds 3 --repeats 3 --no-fused \
        --before-app /tmp/before/florec      # medians of 3 alternated floor/FloRec submissions

writes ``OUT/bench.json`` (stamps, messages, per-phase means, ratios) and prints the table.
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

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "bench" / "deploy-floor"
PHASES = ("process start", "imports", "data load", "work", "hand-off")


def _stamp(line: str) -> float:
    h, m, s = line.split(" ", 1)[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def supernode_messages(log_dir: Path, day0: float) -> dict[int, list[tuple[float, float, str]]]:
    """Per node: (received, sent, message type) of every message, as epoch seconds."""
    out: dict[int, list[tuple[float, float, str]]] = {}
    for path in sorted(log_dir.glob("supernode-*.log")):
        node, got, kind = int(path.stem.split("-")[1]), None, ""
        rows = out.setdefault(node, [])
        for line in path.read_text(errors="replace").splitlines():
            if "Receiving:" in line:
                got, kind = day0 + _stamp(line), line.split("Receiving:")[1].split()[0]
            elif "Sending:" in line and got is not None:
                rows.append((got, day0 + _stamp(line), kind))
                got = None
    return out


def split_messages(phase_rows: list[dict], sn: dict[int, list[tuple[float, float, str]]]
                   ) -> list[dict]:
    """Each ClientApp message's phases in seconds (matched to its SuperNode receive/send)."""
    out = []
    for row in phase_rows:
        # log stamps are taken when the launcher reads a line (late by scheduling delays)
        cands = [m for m in sn.get(row["node"], []) if m[0] <= row["handler_start"]
                 and m[1] >= row["handler_end"] - 0.5]
        if not cands:
            continue
        recv, sent, _ = max(cands, key=lambda m: m[0])
        lazy = float(row.get("lazy_imports_s", 0.0))
        out.append({"app": row["app"], "kind": row["kind"], "node": row["node"],
                    "received": recv, "sent": sent, "total": sent - recv,
                    "process start": row["import_start"] - recv,
                    "imports": row["import_end"] - row["import_start"] + lazy,
                    "data load": row["data_end"] - row["handler_start"],
                    "work": row["handler_end"] - row["data_end"] - lazy,
                    "hand-off": sent - row["handler_end"]})
    return out


def summarize(messages: list[dict], rounds: list[dict]) -> dict:
    """Mean phase seconds per message, round seconds, and the per-round polling remainder."""
    steady = rounds[1:] or rounds  # round 1 also builds caches; report rounds 2.. as steady
    round_s = statistics.mean(r["seconds"] for r in steady)
    per_round = []
    for r in steady:
        inside = [m for m in messages if r["start"] <= m["received"] <= r["end"]]
        by_node: dict[int, float] = {}
        for m in inside:
            by_node[m["node"]] = by_node.get(m["node"], 0.0) + m["total"]
        per_round.append((len(inside), max(by_node.values(), default=0.0)))
    msgs = [m for m in messages if m["kind"] != "query"]
    phases = {p: statistics.mean(m[p] for m in msgs) for p in PHASES} if msgs else {}
    n_msgs = statistics.mean(n for n, _ in per_round)
    node_s = statistics.mean(s for _, s in per_round)
    return {"round_s": round_s, "rounds_s": [r["seconds"] for r in rounds],
            "messages_per_round": n_msgs, "message_s": statistics.mean(m["total"] for m in msgs),
            "phases_s": phases, "node_s_per_round": node_s,
            "polling_and_server_s_per_round": round_s - node_s}


def read_rounds(out: Path) -> list[dict]:
    """``rounds.jsonl`` as (round, start, end, seconds) for both apps."""
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    if "start" in rows[0]:  # the floor's own rows
        return [r | {"seconds": r["end"] - r["start"]} for r in rows]
    end = (out / "rounds.jsonl").stat().st_mtime  # FloRec's rows: seconds per round, in order
    out_rows = []
    for r in reversed(rows):
        out_rows.append({"round": r["round"], "end": end, "start": end - float(r["seconds"]),
                         "seconds": float(r["seconds"])})
        end -= float(r["seconds"])
    return out_rows[::-1]


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

    Each repetition submits every app once, in order (the floor right before FloRec), so each
    FloRec round has a floor measured minutes before it on the same topology. Each app's numbers
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
                if name == "floor-fused" and rep > 0:
                    continue  # the fused floor is a reference, measured once
                out = work / label / f"{name}-{rep}"
                if name == "florec":
                    cfg = florec_cfg | {"out-dir": str(out)}
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


def median_summary(runs: list[dict]) -> dict:
    """Medians over repetitions of every number :func:`summarize` gives (phases too)."""
    keys = ("round_s", "messages_per_round", "message_s", "node_s_per_round",
            "polling_and_server_s_per_round", "wall_s")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["phases_s"] = {p: statistics.median(r["phases_s"].get(p, 0.0) for r in runs)
                       for p in PHASES}
    out["load_avg_1min"] = [r["load_avg_before"][0] for r in runs]
    return out | {k: runs[0][k] for k in ("app", "fab_bytes", "fab_files")} | {"runs": runs}


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
                    help="leave out the fused floor (one message per node and round)")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--before-app", type=Path, default=None,
                    help="a FloRec folder to measure first, with Flower's default 1 s SuperExec "
                         "poll (e.g. a copy of an older commit)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "deploy_rounds")
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
    work = Path(tempfile.mkdtemp(prefix="deploy-rounds-"))
    write_shards(parse_run_config(florec_cfg), work / "shards")
    settings = {}
    if args.before_app is not None:
        settings["before"] = run_setting("before", 1.0, [("floor", FLOOR),
                                                         ("florec", args.before_app)],
                                         args, work, florec_cfg)
    fused = [] if args.no_fused else [("floor-fused", FLOOR)]
    settings["after"] = run_setting(
        "after", deploy.SUPEREXEC_POLL_S,
        [("floor", FLOOR), *fused, ("florec", ROOT)], args, work, florec_cfg)
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


def table(report: dict) -> str:
    """The per-phase table: one column per (setting, app), seconds per message and per round."""
    cols = [(f"{label}: {name}", res) for label, st in report["settings"].items()
            for name, res in st["apps"].items()]

    def row(title: str, fmt: Any) -> str:
        return f"| {title} | " + " | ".join(fmt(res) for _, res in cols) + " |"

    lines = ["| phase | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    lines += [row(f"{p} (s/message)", lambda r, p=p: f"{r['phases_s'].get(p, 0):.2f}")
              for p in PHASES]
    lines += [row("messages per round", lambda r: f"{r['messages_per_round']:.0f}"),
              row("node time per round (slowest node)", lambda r: f"{r['node_s_per_round']:.2f}"),
              row("polling and server per round",
                  lambda r: f"{r['polling_and_server_s_per_round']:.2f}"),
              row("**round (s)**", lambda r: f"**{r['round_s']:.2f}**"),
              row("FAB (MB, files)",
                  lambda r: f"{r.get('fab_bytes', 0) / 2**20:.2f}, {r.get('fab_files', '-')}"),
              row("ratio to its floor (median of repeats)",
                  lambda r: f"{r['ratio_to_floor']:.2f}"),
              row("ratio to its floor, each repeat",
                  lambda r: ", ".join(f"{x:.2f}" for x in r.get("ratios_to_floor", []))),
              row("1-min load average at each submission",
                  lambda r: ", ".join(f"{x:.0f}" for x in r.get("load_avg_1min", [])))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
