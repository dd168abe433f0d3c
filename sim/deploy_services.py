"""The processes of a loopback deployment: Flower executables, certificates, logged services."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from florec.recdata.errors import FloRecError
from florec.sim.flower import PROJECT_ROOT

CERTS_SCRIPT = PROJECT_ROOT / "deploy" / "certs.sh"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ID = re.compile(r"(?:SuperNode ID:|Successfully started run) (\d+)")


def make_certs(out_dir: Path, supernode_keys: int = 0, names: tuple[str, ...] = ()) -> Path:
    """Run ``deploy/certs.sh``: CA, SuperLink certificate, SuperNode keys, SuperExec secret."""
    if shutil.which("openssl") is None:
        raise FloRecError("openssl is not installed; install it (apt-get install openssl) or "
                          "run without --tls")
    cmd = ["bash", str(CERTS_SCRIPT), "-o", str(out_dir), "-k", str(supernode_keys), "-s"]
    for name in names:
        cmd += ["-n", name]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise FloRecError(f"deploy/certs.sh failed: {(res.stderr or res.stdout).strip()}")
    return Path(out_dir)


def flower_exe(name: str) -> str:
    """Path of the Flower executable ``name`` (this Python's ``bin`` first, then ``PATH``)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FloRecError(f"{name} is not installed; run `make venv` (pip install -e .)")
    return found


class Service:
    """A process we started; a thread copies its output into a time-stamped log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path,
                 echo: bool = False) -> None:
        self.name, self.echo = name, echo
        self.node_id: int | None = None  # SuperNode ID (SuperNodes), run ID (``flwr run``)
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, errors="replace", start_new_session=True)
        self.thread = threading.Thread(target=self._pump, name=f"log-{name}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("w") as fh:
            for line in self.proc.stdout:
                fh.write(f"{dt.datetime.now():%H:%M:%S.%f} {_ANSI.sub('', line)}")
                fh.flush()
                if self.echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if self.node_id is None and (m := _ID.search(line)):
                    self.node_id = int(m.group(1))

    def tree(self, sig: signal.Signals) -> list[Any]:
        """Send ``sig`` to this process and its descendants; returns them (psutil)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        return procs

