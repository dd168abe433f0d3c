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


def fake_ray(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A ``ray`` shell script beside a fake ``sys.executable``; it records its argv in ``args``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray = bin_dir / "ray"
    ray.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args'}\n{script}\n")
    ray.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    return tmp_path / "args"


def temp_dir_of(args: Path) -> Path:
    return Path(next(a for a in args.read_text().split() if a.startswith("--temp-dir="))
                .split("=", 1)[1])


def test_a_head_that_exits_names_a_log_that_still_exists(tmp_path, monkeypatch):
    args = fake_ray(tmp_path, monkeypatch, "echo 'ray: port in use'; exit 1")
    with pytest.raises(FloRecError, match="ray: port in use") as err:
        with local_head(1, timeout_s=5):
            pass
    log = Path(str(err.value).rsplit("see ", 1)[1])
    assert "ray: port in use" in log.read_text()
    assert not temp_dir_of(args).exists()
    log.unlink()


def test_a_head_that_hangs_is_killed_and_the_startup_error_is_kept(tmp_path, monkeypatch):
    import florec.sim.ray_cluster as ray_cluster
    import florec.sim.teardown as teardown

    args = fake_ray(tmp_path, monkeypatch, f"echo $$ > {tmp_path / 'pid'}\nexec sleep 60")
    monkeypatch.setattr(teardown, "stop_process_tree", lambda pid, **kw: None)  # survives stop
    monkeypatch.setattr(ray_cluster, "STOP_WAIT_S", 0.2)
    with pytest.raises(FloRecError, match="did not start") as err:
        with local_head(1, timeout_s=1):
            pass
    pid = int((tmp_path / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not temp_dir_of(args).exists()
    Path(str(err.value).rsplit("see ", 1)[1]).unlink()


@pytest.mark.parametrize(("cmd", "role"), [
    ("/v/bin/python3 /v/bin/ray start --head --block --num-cpus=2", "ray-start"),
    ("/v/bin/python3 -m ray.util.client.server --address=1.2.3.4:5 --mode=proxy",
     "ray-client-server"),
])
def test_the_memory_sampler_names_the_processes_of_a_head_started_by_hand(cmd, role):
    assert process_role(cmd) == role
