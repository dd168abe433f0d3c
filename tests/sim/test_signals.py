"""Stop signals: every process a command started is stopped, and the run can be resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from florec.sim.teardown import Interrupted, handle_signals, session_processes, stop_process_tree

ROOT = Path(__file__).resolve().parents[2]
SMALL = "synthetic-users=30 synthetic-items=40 dim=8"


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signals_raise_interrupted_with_their_number(sig: signal.Signals) -> None:
    with pytest.raises(Interrupted) as err, handle_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises as soon as the signal is delivered
    assert err.value.signum == sig


def test_session_sweep_stops_an_orphan_its_parent_left_behind() -> None:
    # the subshell exits at once, leaving its `sleep` orphaned (reparented away from `leader`)
    leader = subprocess.Popen(["bash", "-c", "(sleep 300 &); sleep 300"],
                              start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        members = session_processes(leader.pid)
        tree = {leader.pid} | {c.pid for c in psutil.Process(leader.pid).children(recursive=True)}
        orphans = [p for p in members if p.pid not in tree]
        if orphans or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert orphans, "the orphaned sleep should have left the leader's tree"
    stop_process_tree(leader.pid, grace_s=5, session=True)
    leader.wait(5)
    assert _alive(members) == [] and session_processes(leader.pid) == []


def _checkpoint_round(out: Path) -> int:
    latest = json.loads((out / "checkpoint" / "LATEST").read_text())
    return int(json.loads((out / "checkpoint" / latest["dir"] / "state.json").read_text())["round"])


@pytest.mark.slow
def test_sigterm_stops_the_whole_simulation_and_the_run_resumes(tmp_path: Path) -> None:
    """Issue 11 §1: SIGTERM used to leave SuperLink, SuperExec, simulation and Ray running."""
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "OMP_NUM_THREADS": "1",
           "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "florec.sim.cli", "sim", "--dataset", "synthetic", "--nodes",
           "2", "--rounds", "1000", "--out", str(out), "-c", f"{SMALL} checkpoint-every=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint" / "LATEST").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.5)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 3  # flwr run, SuperLink, SuperExec, flwr-simulation, Ray, ...
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            stop_process_tree(proc.pid, grace_s=5)
    assert proc.returncode == 128 + signal.SIGTERM
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "stopped by SIGTERM" in last and f"florec sim --resume {out}" in last
    assert _alive(tree) == []
    assert all(session_processes(p.pid) == [] for p in tree)
    # nothing writes the folder any more: the checkpoint and rounds stay as they were left
    rnd, lines = _checkpoint_round(out), (out / "rounds.jsonl").read_text()
    time.sleep(3)
    assert _checkpoint_round(out) == rnd and (out / "rounds.jsonl").read_text() == lines
    again = subprocess.run([sys.executable, "-m", "florec.sim.cli", "sim", "--resume", str(out),
                            "-c", f"num-rounds={rnd + 1}"], cwd=ROOT, env=env, timeout=300,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished" and saved["runs"][0]["rounds"] == rnd + 1


def test_a_signal_during_teardown_waits_until_the_teardown_ends() -> None:
    from florec.sim.teardown import signals_deferred

    finished = []
    with pytest.raises(Interrupted) as err, handle_signals():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            finished.append(True)  # not cut short
    assert finished == [True] and err.value.signum == signal.SIGTERM
