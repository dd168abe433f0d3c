"""Docker deployment costs: image builds, image size, compose start-up, s/round side by side.

Measures, on one machine and in one invocation:

- the Debian base images of ``deploy/base.sh`` (debootstrap, then Python + flwr with pip),
- the FloRec image (``deploy/Dockerfile``) built cold (``--no-cache``) and again with every
  layer cached, and its size,
- seconds from ``compose up`` to both SuperNodes connected (host networking, 127.0.0.1),
- seconds per round of the same synthetic FedAvg-MF run (2 nodes) in containers, with
  ``florec deploy local`` (the same processes without Docker) and in Flower's simulation.

Raw numbers go to ``OUT/bench.json``, each run's results folder (``config.json``,
``rounds.jsonl``, ``results.json``) to ``OUT/runs/<setting>/`` and the tables to
``OUT/README.md``; ``--report-only`` rewrites the tables from those files::

    OMP_NUM_THREADS=1 python bench/docker_deploy.py --rounds 4 --out docs/results/docker

Needs root (or the docker group) and a Docker engine, or root and ``dockerd`` (started and
stopped here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))

from docker_engine import (  # noqa: E402
    Engine,
    build_base,
    build_image,
    compose_command,
    default_torch_wheels,
    docker,
    host_ca_file,
    image_size,
    images_of,
)
from docker_topology import ComposeDeployment, node_data  # noqa: E402

CONFIG = {"dataset": "synthetic", "synthetic-users": 200, "synthetic-items": 300, "dim": 16}
IMAGE = "florec-superexec:cpu"
#: folder under OUT/runs/ of each setting's results
FOLDERS = {"containers": "containers", "deploy local": "deploy-local", "simulation": "simulation"}


def rounds_of(out: Path) -> list[dict]:
    """The rows of a results folder's ``rounds.jsonl``."""
    return [json.loads(line) for line in (Path(out) / "rounds.jsonl").read_text().splitlines()]


def summarise(name: str, out: Path, extra: dict | None = None, keep: Path | None = None) -> dict:
    """Per-round seconds (first round apart: start-up) and the final metrics of one run.

    With ``keep`` (``OUT/runs``), the run's results files are copied to ``keep/<setting>/``.
    """
    rows = rounds_of(out)
    if keep is not None:
        folder = keep / next(v for k, v in FOLDERS.items() if k in name)
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "rounds.jsonl", "results.json"):
            shutil.copy(Path(out) / f, folder / f)
    secs = [r["seconds"] for r in rows]
    metrics = json.loads((Path(out) / "results.json").read_text())["runs"][0]["metrics"]
    return {"setting": name, "round_s": secs, "first_round_s": secs[0],
            "later_rounds_s_per_round": statistics.mean(secs[1:]) if len(secs) > 1 else None,
            "replies": [r["train"]["num-replies"] for r in rows],
            "test_ndcg@10": metrics.get("ndcg@10"), **(extra or {})}


def run_containers(compose: list[str], base: str, work: Path, cfg: dict, out: Path,
                   keep: Path) -> dict:
    """The compose topology (plain): seconds to come up, then the run."""
    data = node_data(work / "shards", cfg | {"num-nodes": 2})
    dep = ComposeDeployment(f"florec-bench-{os.getpid()}", compose, work / "compose", IMAGE, base,
                            data)
    try:
        up_s = dep.up()
        code = dep.submit(cfg, "bench", echo=False)
        dep.fetch("bench", out)
        if code != 0:
            raise RuntimeError(f"the run in containers failed; logs in {dep.work}")
    finally:
        dep.save_logs(work / "compose-logs")
        dep.down()
    return summarise("containers (docker compose, host network)", out, {"up_s": up_s}, keep)


def run_cli(setting: str, args: list[str], out: Path, cfg: dict, keep: Path) -> dict:
    """``florec sim`` or ``florec deploy local`` with the same run config."""
    overrides = [a for k, v in cfg.items() if k not in ("dataset", "num-rounds")
                 for a in ("-c", f"{k}={v}")]
    cmd = [sys.executable, "-m", "florec.sim.cli", *args, "--dataset", cfg["dataset"],
           "--nodes", "2", "--rounds", str(cfg["num-rounds"]), "--out", str(out), *overrides,
           "--overwrite"]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(res.stdout + res.stderr)[-1500:]}")
    return summarise(setting, out, {"wall_s": time.monotonic() - start}, keep)


def table(result: dict) -> str:
    """The Markdown tables of the page."""
    b = result["build"]
    lines = ["| image step | seconds |", "|---|---|",
             f"| Debian base (`deploy/base.sh -r`: debootstrap, Python, flwr) | "
             f"{b['base_s']:.0f} |",
             f"| FloRec image, cold (`--no-cache`) | {b['cold_s']:.0f} |",
             f"| FloRec image, cached layers | {b['cached_s']:.1f} |", "",
             f"FloRec image `{IMAGE}`: {b['image_bytes'] / 1e9:.2f} GB "
             f"(base `florec/superexec:1.42.0`: {b['base_bytes'] / 1e9:.2f} GB).", "",
             "| setting | round 1 (s) | later rounds (s/round) | replies | test ndcg@10 |",
             "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['setting']} | {r['first_round_s']:.1f} | "
                     f"{r['later_rounds_s_per_round']:.2f} | {r['replies']} | "
                     f"{r['test_ndcg@10']:.4f} |")
    up = next(r["up_s"] for r in result["runs"] if "up_s" in r)
    lines += ["", f"Compose topology up (SuperLink healthy, both SuperNodes connected): "
              f"{up:.1f} s."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, result: dict) -> None:
    """``README.md`` from ``bench.json``; each run re-read from ``runs/<setting>/`` if there."""
    runs = []
    for r in result["runs"]:
        folder = out / "runs" / next(v for k, v in FOLDERS.items() if k in r["setting"])
        extra = {k: r[k] for k in ("up_s", "wall_s") if k in r}
        runs.append(summarise(r["setting"], folder, extra) if folder.exists() else r)
    result = result | {"runs": runs}
    cfg = result["config"]
    (out / "README.md").write_text(
        "# Docker deployment costs\n\nMade by `OMP_NUM_THREADS=1 python bench/docker_deploy.py "
        f"--rounds {cfg['num-rounds']} --out docs/results/docker` (raw numbers: `bench.json`, "
        "each run's results folder in `runs/`). Synthetic data "
        f"({cfg['synthetic-users']} users, {cfg['synthetic-items']} items), FedAvg-MF, 2 nodes, "
        f"{cfg['num-rounds']} rounds, the same run config in every setting, one after the other "
        f"in one invocation; {result['machine']}. Docker engine {result['engine']}, "
        f"{result['compose']}.\n\n" + table(result))


def main() -> None:
    """Build, measure, run the three settings, write ``bench.json`` and ``README.md``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "docker")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite OUT/README.md from OUT/bench.json and OUT/runs/")
    ap.add_argument("--torch-wheels", type=Path, default=default_torch_wheels(),
                    help="folder with a CPU torch wheel served to the build (see deploy/README)")
    args = ap.parse_args()
    if args.report_only:
        write_report(args.out, json.loads((args.out / "bench.json").read_text()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = CONFIG | {"num-rounds": args.rounds}
    ca = host_ca_file()
    with Engine(args.out / "dockerd.log") as engine, \
            tempfile.TemporaryDirectory(prefix="florec-bench-docker-") as tmp:
        compose = compose_command()
        start = time.monotonic()
        subprocess.run(["bash", str(ROOT / "deploy" / "base.sh"), "-r",
                        *(["-c", str(ca)] if ca else [])], check=True, capture_output=True)
        base_s = time.monotonic() - start
        base = build_base(ca)
        cold_s = build_image(IMAGE, base, ca, args.torch_wheels, no_cache=True)
        cached_s = build_image(IMAGE, base, ca, args.torch_wheels)
        build = {"base_s": base_s, "cold_s": cold_s, "cached_s": cached_s,
                 "image_bytes": image_size(IMAGE),
                 "base_bytes": image_size(images_of(base)["superexec"])}
        print(f"[bench] builds: {build}", flush=True)
        work = Path(tmp)
        keep = args.out / "runs"
        runs = [run_containers(compose, base, work, cfg, work / "containers", keep),
                run_cli("florec deploy local (processes on 127.0.0.1)", ["deploy", "local"],
                        work / "loopback", cfg, keep),
                run_cli("Flower simulation (florec sim)", ["sim"], work / "sim", cfg, keep)]
        result = {"config": cfg, "nodes": 2, "build": build, "runs": runs,
                  "engine": engine.version(), "compose": " ".join(compose),
                  "docker_client": docker("version", "--format", "{{.Client.Version}}").stdout
                  .strip(), "machine": f"{platform.machine()}, {os.cpu_count()} cores "
                  "(shared by 8 engineers: numbers are noisy)", "OMP_NUM_THREADS":
                  os.environ.get("OMP_NUM_THREADS")}
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.out, result)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
