"""Phases of a deployed round from the logs of ``bench/deploy_rounds.py``, and its table.

A ClientApp message is matched to its SuperNode's receive and send log lines and splits into:
process start (SuperNode received -> the app module starts importing: the SuperExec's task
poll, the new ``flwr-clientapp`` process, Python, Flower, unpacking and hashing the FAB),
imports (the app module and the method's node module), data load, work, hand-off (handler
returned -> the SuperNode sends the reply). A round's wall time less its messages on the
slowest node is polling and the server (the SuperNode's fixed 3 s idle poll, aggregation).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

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
    """Mean phase seconds per message, round seconds, and the per-round polling remainder.

    Steady rounds are 2..R-1 (with R > 2): round 1 also builds caches, and in a fused run the
    last round also sends a plain ``evaluate`` message (no next round carries it).
    """
    steady = rounds[1:-1] if len(rounds) > 2 else (rounds[1:] or rounds)
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


def median_summary(runs: list[dict]) -> dict:
    """Medians over repetitions of every number :func:`summarize` gives (phases too)."""
    keys = ("round_s", "messages_per_round", "message_s", "node_s_per_round",
            "polling_and_server_s_per_round", "wall_s")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["phases_s"] = {p: statistics.median(r["phases_s"].get(p, 0.0) for r in runs)
                       for p in PHASES}
    out["load_avg_1min"] = [r["load_avg_before"][0] for r in runs]
    return out | {k: runs[0][k] for k in ("app", "fab_bytes", "fab_files")} | {"runs": runs}


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
