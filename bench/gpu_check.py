"""GPU check: the same runs on CPU and CUDA, and a Ray simulation with fractional GPUs.

Run on a machine with a GPU (the data root in FLOREC_DATA_DIR):

    OMP_NUM_THREADS=4 python bench/gpu_check.py --out results/gpu-check

Prints one JSON object per check (also appended to OUT/gpu_check.jsonl):
- ``central``: MF, SASRec and FS-Point epochs on CPU vs CUDA (seconds per epoch, metrics);
- ``inprocess``: FedAvg-MF rounds over all ML-100K users on CPU vs CUDA (same seed; the
  metrics must agree within float tolerance);
- ``ray``: `florec sim` through `flwr run` with ``client-resources-num-gpus`` 0.25 (four Ray
  actors share the GPU) and the number of processes that held a CUDA context (nvidia-smi).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(out: Path, row: dict[str, Any]) -> None:
    """Print a result row and append it to ``out/gpu_check.jsonl``."""
    line = json.dumps(row, default=str)
    print(line, flush=True)
    with (out / "gpu_check.jsonl").open("a") as fh:
        fh.write(line + "\n")


def central_check(name: str, overrides: dict[str, Any], epochs: int, batch: int,
                  device: str, out: Path) -> dict[str, Any]:
    """One central run; seconds per epoch and its test metrics."""
    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central import run_central

    cfg = parse_run_config(overrides | {"eval-every": epochs})
    t0 = time.perf_counter()
    run = run_central(cfg, epochs, batch, out / f"central-{name}-{device}", device)
    wall = time.perf_counter() - t0
    return {"check": "central", "model": name, "device": device, "epochs": epochs,
            "wall_s": round(wall, 2), "s_per_epoch": round(wall / epochs, 3),
            "metrics": {k: round(v, 4) for k, v in run["metrics"].items() if "@10" in k}}


def inprocess_check(device: str, out: Path) -> dict[str, Any]:
    """FedAvg-MF on ML-100K, 10 nodes, 3 rounds, in process on ``device``."""
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config({"dataset": "ml-100k", "num-nodes": 10, "num-rounds": 3,
                            "device": device, "out-dir": str(out / f"fed-{device}")})
    t0 = time.perf_counter()
    run = run_federated(LocalGrid(cfg.to_flower(), 10, keep_replies=False), cfg,
                        Path(cfg.out_dir))
    return {"check": "inprocess", "device": device, "rounds": 3, "ok": bool(run["metrics"]),
            "s_per_round": round((time.perf_counter() - t0) / 3, 3),
            "metrics": {k: round(v, 5) for k, v in run["metrics"].items() if "@10" in k}}


class CudaProcesses:
    """Distinct PIDs that nvidia-smi lists as holding a CUDA context, sampled in a thread."""

    def __init__(self) -> None:
        self.pids: set[str] = set()
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            res = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True)
            total = 0
            for line in res.stdout.splitlines():
                pid, _, mib = line.partition(",")
                if pid.strip():
                    self.pids.add(pid.strip())
                    total += int(mib.strip() or 0)
            self.peak_mib = max(self.peak_mib, total)
            self._stop.wait(0.5)

    def __enter__(self) -> CudaProcesses:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_check(out: Path, gpus_per_client: float, nodes: int) -> dict[str, Any]:
    """`florec sim` with fractional GPUs per Ray actor; which processes used the GPU."""
    target = out / f"ray-gpu{gpus_per_client:g}"
    cmd = [sys.executable, "-m", "florec.sim.cli", "sim", "--dataset", "ml-100k", "--nodes",
    str(nodes), "--rounds", "3", "--out", str(target), "--gpus-per-client", str(gpus_per_client),
           "--cpus-per-client", "1", "-c", "device=cuda"]
    t0 = time.perf_counter()
    with CudaProcesses() as cuda:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    (out / "ray_sim.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    row: dict[str, Any] = {"check": "ray", "gpus_per_client": gpus_per_client, "nodes": nodes,
                           "exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                           "cuda_processes": len(cuda.pids), "peak_gpu_mib": cuda.peak_mib}
    rounds = target / "rounds.jsonl"
    if rounds.exists():
        rows = [json.loads(x) for x in rounds.read_text().splitlines() if x.strip()]
        row["s_per_round"] = [round(r["seconds"], 2) for r in rows]
        row["valid_ndcg@10"] = rows[-1].get("valid", {}).get("ndcg@10")
    return row


def main() -> None:
    """Run every check; a failing check is reported and the others go on."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check"))
    parser.add_argument("--skip", default="", help="comma-separated check names to skip")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    import torch

    emit(out, {"check": "env", "torch": torch.__version__, "cuda": torch.cuda.is_available(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")})
    checks = []
    if "inprocess" not in skip:
        checks += [lambda d=d: inprocess_check(d, out) for d in ("cpu", "cuda")]
    if "central" not in skip:
        mf = {"dataset": "ml-100k", "model": "mf", "lr": 0.005}
        seq = {"dataset": "ml-100k", "model": "sasrec", "split": "loo"}
        fs = {"dataset": "ml-1m", "model": "mf", "split": "ratio-fs", "mf-loss": "fs-point",
              "lr": 0.1, "weight-decay": 1e-3, "init-std": 1.0, "ks": "20",
              "selection-metric": "recall@20"}
        for d in ("cpu", "cuda"):
            checks.append(lambda d=d: central_check("mf", mf, 5, 1024, d, out))
            checks.append(lambda d=d: central_check("sasrec", seq, 2, 256, d, out))
            checks.append(lambda d=d: central_check("sasrec-oracle", seq | {"oracle": True}, 1,
                                                    256, d, out))
        checks.append(lambda: central_check("fs-point", fs, 1, 1024, "cuda", out))
    if "ray" not in skip:
        checks.append(lambda: ray_check(out, 0.25, 8))
    for check in checks:
        try:
            emit(out, check())
        except Exception as err:  # noqa: BLE001 - report and go on
            emit(out, {"check": "failed", "error": f"{type(err).__name__}: {err}"[:500],
                       "trace": traceback.format_exc()[-1500:]})


if __name__ == "__main__":
    main()
