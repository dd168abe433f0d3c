"""bench/deploy_rounds*.py: a message's phases from SuperNode logs and ClientApp stamps."""

from __future__ import annotations

import datetime as dt

import pytest

DAY0 = dt.datetime(2026, 1, 1).timestamp()


def clock(t: float) -> str:
    return (dt.datetime.fromtimestamp(DAY0) + dt.timedelta(seconds=t)).strftime("%H:%M:%S.%f")


def write_log(path, messages) -> None:
    lines = []
    for recv, sent, kind in messages:
        lines += [f"{clock(recv)} INFO :      Receiving: {kind} message (ID: a)",
                  f"{clock(sent)} INFO :      Sending: {kind} message (ID: b)"]
    path.write_text("\n".join(lines) + "\n")


def stamps(node: int, kind: str, recv: float, **phases: float) -> dict:
    t = DAY0 + recv + phases["dispatch"]
    row = {"app": "florec", "kind": kind, "node": node, "proc_start": t}
    for key, name in (("import_start", "process"), ("import_end", "imports")):
        t += phases[name]
        row[key] = t
    row["handler_start"] = t
    row["data_end"] = t + phases["data"]
    row["handler_end"] = row["data_end"] + phases["work"]
    row["lazy_imports_s"] = 0.0
    return row


def test_each_message_splits_into_phases_that_add_up_to_its_time_on_the_node(
        bench_script, tmp_path) -> None:
    bench = bench_script("deploy_rounds_phases")
    phases = {"dispatch": 0.1, "process": 2.0, "imports": 1.0, "data": 0.01, "work": 0.3}
    # two rounds of (train, evaluate) on two nodes; node 1 is 0.5 s slower to hand off
    msgs = {0: [], 1: []}
    rows = []
    for start in (10.0, 30.0):
        for node in (0, 1):
            t = start
            for kind in ("train", "evaluate"):
                body = sum(phases.values())
                sent = t + body + 0.2 + 0.5 * node
                msgs[node].append((t, sent, kind))
                rows.append(stamps(node, kind, t, **phases))
                t = sent + 3.0  # the SuperNode's idle poll before the next message
    for node, m in msgs.items():
        write_log(tmp_path / f"supernode-{node}.log", m)
    sn = bench.supernode_messages(tmp_path, DAY0)
    assert [k for _, _, k in sn[1]] == ["train", "evaluate"] * 2
    split = bench.split_messages(rows, sn)
    assert len(split) == 8
    for m in split:
        assert sum(m[p] for p in bench.PHASES) == pytest.approx(m["total"], abs=1e-4)
        assert m["process start"] == pytest.approx(2.1, abs=1e-4)  # poll, spawn, start
        assert m["hand-off"] == pytest.approx(0.2 + 0.5 * m["node"], abs=1e-4)
    rounds = [{"round": r + 1, "start": DAY0 + s, "end": DAY0 + s + 15.0, "seconds": 15.0}
              for r, s in enumerate((10.0, 30.0))]
    res = bench.summarize(split, rounds)
    slowest = 2 * (sum(phases.values()) + 0.7)  # node 1: train + evaluate
    assert res["messages_per_round"] == 4
    assert res["node_s_per_round"] == pytest.approx(slowest, abs=1e-3)
    assert res["polling_and_server_s_per_round"] == pytest.approx(15.0 - slowest, abs=1e-3)
    assert res["phases_s"]["imports"] == pytest.approx(1.0, abs=1e-4)


def test_steady_rounds_leave_out_the_first_and_the_last(bench_script) -> None:
    # a fused run: round 1 builds caches, round 4 also sends the last plain evaluate message
    bench = bench_script("deploy_rounds_phases")
    seconds = (30.0, 10.0, 12.0, 25.0)
    rounds, messages, t = [], [], DAY0
    for r, s in enumerate(seconds, 1):
        rounds.append({"round": r, "start": t, "end": t + s, "seconds": s})
        messages.append({"kind": "train+evaluate", "node": 0, "received": t + 1.0,
                         "total": s / 2} | {p: s / 10 for p in bench.PHASES})
        t += s
    res = bench.summarize(messages, rounds)
    assert res["round_s"] == pytest.approx(11.0)
    assert res["node_s_per_round"] == pytest.approx(5.5)
    assert res["rounds_s"] == list(seconds)
    assert bench.summarize(messages[:2], rounds[:2])["round_s"] == pytest.approx(10.0)


def test_the_bench_script_takes_the_phase_functions_from_their_module(bench_script) -> None:
    script, phases = bench_script("deploy_rounds"), bench_script("deploy_rounds_phases")
    assert script.summarize.__module__ == script.table.__module__ == "deploy_rounds_phases"
    assert script.PHASES == phases.PHASES
