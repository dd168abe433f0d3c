"""A failed Flower run: the SuperLink's status detail in one line, its logs kept; 10k items run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from florec.sim import flower
from florec.sim.flower import RunFailed, flower_env, flwr_run


class FakeSuperLink:
    """Stands in for the SuperLink: writes its log into FLWR_HOME as the real one does."""

    def __init__(self, env: dict[str, str]) -> None:
        self.log_path = Path(env["FLWR_HOME"]) / "superlink.log"

    def __enter__(self) -> FakeSuperLink:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("INFO: run 1 claimed\n")
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def failed_run(monkeypatch: pytest.MonkeyPatch):
    """`flwr run` exits 0 and the SuperLink records ``finished:failed`` with ``details``."""

    def run(details: str) -> str:
        monkeypatch.setattr(flower, "LocalSuperLink", FakeSuperLink)
        monkeypatch.setattr(flower.subprocess, "run",
                            lambda *a, **k: subprocess.CompletedProcess(a, 0))
        monkeypatch.setattr(flower, "run_status", lambda env: ("finished:failed", details))
        return details

    return run


def test_a_failed_run_names_the_superlink_detail_and_keeps_its_logs(tmp_path, failed_run):
    failed_run("No heartbeat received from the task")
    with pytest.raises(RunFailed) as err:
        flwr_run({"num-rounds": 1}, 2, env=flower_env(tmp_path / "flwr"))
    line = str(err.value)
    assert "\n" not in line and "finished:failed: No heartbeat received from the task" in line
    assert "held Python's GIL" in line  # the likely cause, with Flower's own limit
    log_path = Path(line.rsplit("SuperLink log: ", 1)[1].rstrip(")"))
    assert log_path.read_text() == "INFO: run 1 claimed\n"  # FLWR_HOME survives the failure


def test_a_server_exception_is_the_cause_without_the_heartbeat_hint(tmp_path, failed_run):
    failed_run("Simulation failed with exception: ValueError: bad rank")
    with pytest.raises(RunFailed, match=r"finished:failed: ValueError: bad rank \(SuperLink"):
        flwr_run({"num-rounds": 1}, 2, env=flower_env(tmp_path / "flwr"))


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"model": "mf", "fedcia-comm": "factored", "fedcia-rank": 128},
                                   {"model": "gfcf", "gfcf-mode": "exact"}])
def test_a_fedcia_run_on_10000_items_finishes_under_flwr_run(tmp_path, extra):
    """Issue 21: the server's eigensolve on a 10,000-item catalogue starved the heartbeat."""
    overrides = {"dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 10_000,
                 "synthetic-interactions": 20, "algorithm": "fedcia", "num-nodes": 2,
                 "num-rounds": 1, "out-dir": str(tmp_path / "run")} | extra
    flwr_run(overrides, 2, env=flower_env(tmp_path / "flwr"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "finished" and saved["runs"][0]["rounds"] == 1
