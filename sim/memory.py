"""Memory of a simulation's process tree, sampled per process (PSS where the kernel reports it).

A Flower simulation is a dozen processes: the ``florec sim`` driver, the SuperLink, the
SuperExec, ``flwr-simulation`` (ServerApp and Ray driver), Ray's GCS server, raylet, agents and
log monitor, and the Ray workers that host the ``ClientAppActor`` objects. Summing their RSS counts
every shared page (torch's libraries, Ray's object store mapped by several processes) once per
process that maps it; PSS (proportional set size, ``/proc/PID/smaps_rollup``) charges a shared
page ``1/k`` to each of the ``k`` processes that map it, so the PSS sum is the memory the tree
really holds. :class:`ProcessTreeMemory` samples both, per process, and keeps the peak sample's
breakdown by role (:func:`process_role`).

A process belongs to the tree when it descends from ``root`` or carries ``tag`` (an environment
variable ``NAME=VALUE`` the caller put into the run's environment: Ray's daemons and workers
inherit it even where their parent is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

#: (role, substrings of the command line or process title), first match wins
ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ray-actor", ("ray::ClientAppActor",)),
    ("ray-worker-idle", ("ray::IDLE",)),
    ("ray-gcs", ("gcs_server",)),
    ("ray-raylet", ("raylet/raylet",)),
    ("ray-agents", ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard/agent.py",
                    "runtime_env/agent", "log_monitor.py", "dashboard/dashboard.py",
                    "autoscaler/_private/monitor.py")),
    ("ray-start", ("bin/ray start",)),  # a head started by hand (`ray start --block`)
    ("ray-client-server", ("ray.util.client.server",)),
    ("ray-worker", ("ray::", "default_worker.py")),
    ("flwr-simulation", ("flwr-simulation",)),
    ("flwr-superexec", ("flwr-superexec", "flower-superexec")),
    ("flwr-superlink", ("flower-superlink",)),
    ("flwr-cli", ("flwr run", "/flwr ")),
    ("florec-driver", ("florec.sim.cli", "florec sim", "bench/perf_memory.py")),
)


def process_role(cmdline: str) -> str:
    """The role of a process in a Flower + Ray simulation, from its command line or title.

    Parameters
    ----------
    cmdline : str
        ``" ".join(proc.cmdline())`` (Ray workers show their title there, e.g.
        ``ray::ClientAppActor.run``).

    Returns
    -------
    str
        One of :data:`ROLES`' names, or ``"other"``.

    """
    for role, needles in ROLES:
        if any(n in cmdline for n in needles):
            return role
    return "other"


@dataclass
class MemorySample:
    """One sample: per-process PSS/RSS/USS (MiB) and the tree's sums."""

    t: float
    procs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pss_mb(self) -> float:
        """Sum of the processes' PSS (RSS where PSS is unavailable), MiB."""
        return sum(p["pss_mb"] for p in self.procs)

    @property
    def rss_mb(self) -> float:
        """Sum of the processes' RSS, MiB (shared pages counted once per process)."""
        return sum(p["rss_mb"] for p in self.procs)

    def by_role(self) -> dict[str, dict[str, float]]:
        """``{role: {"n", "pss_mb", "rss_mb"}}`` summed over the processes of each role."""
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "pss_mb": 0.0,
                                                                "rss_mb": 0.0})
        for p in self.procs:
            row = out[p["role"]]
            row["n"] += 1
            row["pss_mb"] = round(row["pss_mb"] + p["pss_mb"], 1)
            row["rss_mb"] = round(row["rss_mb"] + p["rss_mb"], 1)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["pss_mb"]))


def _tagged(proc: Any, tag: tuple[str, str] | None) -> bool:
    if tag is None:
        return False
    try:
        return proc.environ().get(tag[0]) == tag[1]
    except Exception:  # noqa: BLE001 - psutil raises several kinds for vanished/foreign procs
        return False


def sample_tree(root: int, tag: tuple[str, str] | None = None, pss: bool = True
                ) -> MemorySample:
    """Measure every process of the tree once (see the module docstring).

    Parameters
    ----------
    root : int
        PID whose descendants (and itself) belong to the tree.
    tag : (str, str), optional
        An environment variable ``(name, value)``; processes that carry it belong too.
    pss : bool
        Read PSS and USS (``memory_full_info``, a read of ``smaps_rollup``); RSS only if False.

    """
    import psutil

    procs: dict[int, Any] = {}
    try:
        top = psutil.Process(root)
        procs = {p.pid: p for p in [top, *top.children(recursive=True)]}
    except psutil.NoSuchProcess:
        pass
    if tag is not None:
        for p in psutil.process_iter():
            if p.pid not in procs and _tagged(p, tag):
                procs[p.pid] = p
    sample = MemorySample(time.monotonic())
    for pid, p in sorted(procs.items()):
        try:
            info = p.memory_full_info() if pss else p.memory_info()
            cmd = " ".join(p.cmdline()) or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss = info.rss / 2**20
        sample.procs.append({"pid": pid, "role": process_role(cmd), "cmd": cmd[:120],
                             "rss_mb": round(rss, 1),
                             "pss_mb": round(getattr(info, "pss", info.rss) / 2**20, 1),
                             "uss_mb": round(getattr(info, "uss", info.rss) / 2**20, 1)})
    return sample


def shm_used_mb() -> float:
    """MiB in use on ``/dev/shm`` (where Ray's object store keeps its file), 0 if absent."""
    try:
        return shutil.disk_usage("/dev/shm").used / 2**20
    except OSError:
        return 0.0


class ProcessTreeMemory:
    """Samples a process tree's memory in a thread; keeps the peak and the sample it came from.

    Attributes
    ----------
    peak : MemorySample
        The sample with the largest PSS sum.
    peak_rss_mb : float
        The largest RSS sum over all samples (it may come from another sample than ``peak``).
    series : list of (float, float, float)
        ``(seconds since start, PSS sum, RSS sum)`` of every sample.

    """

    def __init__(self, root: int | None = None, tag: tuple[str, str] | None = None,
                 every_s: float = 0.5, pss: bool = True) -> None:
        self.root, self.tag, self.every_s, self.pss = root or os.getpid(), tag, every_s, pss
        self.peak = MemorySample(0.0)
        self.peak_rss_mb = 0.0
        self.shm_base_mb = shm_used_mb()
        self.peak_shm_mb = 0.0
        self.series: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()

    def _loop(self) -> None:
        # the lowest CPU priority for this thread only (Linux): a sample reads every process's
        # smaps_rollup (about 35 ms for a Flower + Ray tree), which must not slow what it measures
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.every_s)

    def take(self) -> MemorySample:
        """Take one sample now and update the peaks."""
        s = sample_tree(self.root, self.tag, self.pss)
        self.series.append((round(s.t - self._t0, 2), round(s.pss_mb, 1), round(s.rss_mb, 1)))
        if s.pss_mb > self.peak.pss_mb:
            self.peak = s
        self.peak_rss_mb = max(self.peak_rss_mb, s.rss_mb)
        self.peak_shm_mb = max(self.peak_shm_mb, shm_used_mb() - self.shm_base_mb)
        return s

    def report(self) -> dict[str, Any]:
        """Peak PSS and RSS sums, /dev/shm growth, the peak sample by role and by process."""
        return {"peak_pss_mb": round(self.peak.pss_mb, 1),
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_shm_mb": round(self.peak_shm_mb, 1),
                "samples": len(self.series),
                "by_role": self.peak.by_role(),
                "processes": sorted(self.peak.procs, key=lambda p: -p["pss_mb"])}

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
