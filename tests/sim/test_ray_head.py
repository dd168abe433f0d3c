"""A lean Ray head of our own: it answers, starts no monitors, and leaves nothing behind."""

import sys
from pathlib import Path

import psutil
import pytest

from florec.recdata.errors import FloRecError
from florec.sim.memory import process_role
from florec.sim.ray_cluster import LEAN_HEAD_FLAGS, check_ray_address, local_head

RAY = Path(sys.executable).parent / "ray"


@pytest.mark.slow
def test_a_lean_head_answers_without_monitors_and_is_stopped_with_everything_it_started():
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with local_head(1) as address:
        assert check_ray_address(address) == address
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        cmds = [" ".join(p.cmdline()) for p in started]
        assert any("gcs_server" in c for c in cmds) and any("raylet" in c for c in cmds)
        for daemon in ("log_monitor.py", "_private/monitor.py"):
            assert not any(daemon in c for c in cmds), daemon
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert "--no-monitor" in LEAN_HEAD_FLAGS


def test_a_head_that_cannot_start_fails_in_one_line(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # no `ray` beside it
    with pytest.raises(FloRecError, match="no `ray` command") as err:
        with local_head(1, timeout_s=5):
            pass
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("cmd", "role"), [
    ("/v/bin/python3 /v/bin/ray start --head --block --num-cpus=2", "ray-start"),
    ("/v/bin/python3 -m ray.util.client.server --address=1.2.3.4:5 --mode=proxy",
     "ray-client-server"),
])
def test_the_memory_sampler_names_the_processes_of_a_head_started_by_hand(cmd, role):
    assert process_role(cmd) == role
