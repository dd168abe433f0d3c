"""A failed run exits non-zero with its cause and never shows, or writes over, another run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from florec.recdata.errors import FloRecError
from florec.server.results import ResultsWriter, run_entry

ROOT = Path(__file__).resolve().parents[2]
SMALL = "synthetic-users=30 synthetic-items=40 dim=8"


def florec(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "florec.sim.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_federated_cpr_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = one_error_line(florec("sim", "--dataset", "synthetic", "--nodes", "2", "--rounds",
                                 "2", "--out", str(out), "-c", f"{SMALL} mf-loss='cpr'"))
    assert "mf-loss 'cpr'" in line and "no federated form" in line
    assert not (out / "config.json").exists()


def test_resume_without_a_checkpoint_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.write_config({"dataset": "synthetic", "num-nodes": 2, "num-rounds": 2})
    writer.close()
    line = one_error_line(florec("sim", "--resume", str(tmp_path)))
    assert "holds no checkpoint" in line


def test_a_second_sim_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    code = (f"from florec.server.folder_lock import FolderLock; import time; "
            f"FolderLock({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); "
            "time.sleep(300)")
    first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE)  # another run owns the folder
    try:
        assert first.stdout.readline().strip() == "held"
        line = one_error_line(florec("sim", "--dataset", "synthetic", "--nodes", "2", "--rounds",
                                     "2", "--out", str(tmp_path / "run"), "-c", SMALL))
    finally:
        first.terminate()
        first.wait(10)
    assert f"in use by another run (process {first.pid})" in line


def test_a_finished_folder_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "central"
    args = ["central", "--dataset", "synthetic", "--epochs", "1", "--out", str(out), "-c", SMALL]
    first = florec(*args)
    assert first.returncode == 0, first.stderr
    before = json.loads((out / "results.json").read_text())
    line = one_error_line(florec(*args[:-1], f"{SMALL} seed=3"))
    assert "already holds a run" in line and "--overwrite" in line
    assert json.loads((out / "results.json").read_text()) == before
    again = florec(*args[:-1], f"{SMALL} seed=3", "--overwrite")
    assert again.returncode == 0, again.stderr
    after = json.loads((out / "results.json").read_text())
    assert after["config"]["seed"] == 3 and after["runs"][0]["seed"] == 3
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 1


def test_results_older_than_the_run_are_never_reported_as_its_own(tmp_path: Path) -> None:
    from florec.sim.cli_common import report_finished

    writer = ResultsWriter(tmp_path)
    writer.write_results({}, [run_entry("m", "federated", "d", "loo", 0)])
    writer.close()
    with pytest.raises(FloRecError, match="wrote no results"):
        report_finished(tmp_path, False, "federated", started=time.time() + 1)


@pytest.mark.slow
def test_a_serverapp_that_raises_fails_the_run_with_its_cause(tmp_path: Path) -> None:
    """Issue 11 §2: `flwr run --stream` exits 0 when the ServerApp raises; the status does not."""
    from florec.sim.flower import RunFailed, flower_env, flwr_run

    overrides = {"dataset": "synthetic", "synthetic-users": 30, "synthetic-items": 40, "dim": 8,
                 "num-nodes": 2, "num-rounds": 2, "mf-loss": "cpr",
                 "out-dir": str(tmp_path / "run")}  # bypasses the CLI's own check on purpose
    with pytest.raises(RunFailed) as err:
        flwr_run(overrides, 2, env=flower_env(tmp_path / "flwr"))
    line = str(err.value)
    assert "finished:failed" in line and "mf-loss 'cpr'" in line and "\n" not in line
    assert not (tmp_path / "run" / "results.json").exists()
