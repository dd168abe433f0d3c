"""One run per results folder (an OS lock), --overwrite, and per-run memory figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from florec.recdata.errors import ConfigError
from florec.server.folder_lock import LOCK_NAME, FolderLock, claim_folder
from florec.server.results import ResultsWriter, run_entry

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _try_writer(folder: Path) -> subprocess.CompletedProcess:
    code = f"""
        from florec.server.results import ResultsWriter
        ResultsWriter({str(folder)!r})
        print("acquired")
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def _holder(folder: Path) -> subprocess.Popen:
    holder = _python(f"""
        import time
        from florec.server.results import ResultsWriter
        w = ResultsWriter({str(folder)!r})
        print("held", flush=True)
        time.sleep(300)
    """)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_in_another_process_is_refused_in_one_line(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        res = _try_writer(tmp_path)  # a sibling of the holder, not its descendant
        assert res.returncode != 0 and "acquired" not in res.stdout
        last = res.stderr.strip().splitlines()[-1]
        assert f"is in use by another run (process {holder.pid})" in last
        assert "choose another --out" in last
    finally:
        holder.terminate()
        holder.wait(10)
    assert _try_writer(tmp_path).stdout.strip() == "acquired"


def test_a_killed_run_leaves_the_folder_free(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    with pytest.raises(ConfigError, match="in use by another run"):
        FolderLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    lock = FolderLock(tmp_path).acquire()  # the OS dropped the dead process's lock
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()


def test_processes_started_by_the_holder_share_its_lock(tmp_path: Path) -> None:
    with FolderLock(tmp_path):
        assert _try_writer(tmp_path).stdout.strip() == "acquired"  # our child: the ServerApp
        again = FolderLock(tmp_path).acquire()  # and this process again (re-entrant)
        again.release()
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_a_folder_holding_a_run_needs_overwrite_or_resume(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.write_config({"seed": 1})
    writer.append_round({"round": 1})
    writer.write_results({"seed": 1}, [run_entry("m", "central", "d", "loo", 1)])
    writer.close()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        claim_folder(tmp_path)
    assert "--overwrite" in str(err.value) and "--resume" in str(err.value)
    claim_folder(tmp_path, resume=True).release()
    assert (tmp_path / "results.json").exists()
    claim_folder(tmp_path, overwrite=True).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, "notes.txt"])


# Memory is measured in a fresh interpreter: in the suite's long-lived process earlier tests
# leave freed heap that a new block may reuse without growing the resident set.
_ALLOCATING_RUNS = """
import json, sys, time
from pathlib import Path
import numpy as np
from florec.server.results import ResultsWriter, run_entry

def run(folder, mb):
    writer = ResultsWriter(Path(folder))
    block = np.ones(mb * 2**20 // 8)  # touched: resident
    time.sleep(0.2)
    entry = run_entry("m", "central", "d", "loo", 0)
    del block
    writer.write_results({}, [entry])
    writer.close()
    return entry

print(json.dumps([run(sys.argv[1], 300), run(sys.argv[2], 10)]))
"""

_MONITOR_PEAK = """
import json, time
import numpy as np
from florec.server.rss_monitor import RssMonitor

with RssMonitor(every_s=0.01) as mem:
    block = np.ones(200 * 2**20 // 8)
    time.sleep(0.3)
    del block
    time.sleep(0.1)
    print(json.dumps(mem.fields()))
"""


def _fresh_python(code: str, *args: str) -> object:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_is_measured_per_run_not_as_the_process_high_water_mark(tmp_path: Path) -> None:
    big, small = _fresh_python(_ALLOCATING_RUNS, str(tmp_path / "a"), str(tmp_path / "b"))
    assert big["rss_growth_mb"] == pytest.approx(300, abs=60)
    assert small["rss_growth_mb"] < 60
    assert small["rss_peak_mb"] < big["rss_peak_mb"] - 200  # ru_maxrss would repeat big's
    saved = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    assert saved["rss_peak_mb"] == small["rss_peak_mb"]


def test_rss_monitor_sees_a_peak_between_its_reads() -> None:
    fields = _fresh_python(_MONITOR_PEAK)
    assert fields["rss_growth_mb"] == pytest.approx(200, abs=50)
