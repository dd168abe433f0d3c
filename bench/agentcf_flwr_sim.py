r"""AgentCF++ under a real ``flwr run`` simulation vs the same federation in one process.

Runs ``florec sim --model agentcf++`` (Flower SuperLink, Ray, one ClientApp per node, user
memories in the node stores) with the scripted positive-control LLM on the synthetic
multi-domain users, then :func:`florec.sim.central_agentcf.run_federated_agentcf` with the same
config, and writes ``<out>/compare.json`` (both runs' metrics and bytes) beside the Flower run's
``config.json`` / ``results.json``. Run::

    OMP_NUM_THREADS=1 python bench/agentcf_flwr_sim.py --out docs/results/agentcf/flwr-sim
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

KEYS = {"llm-backend": "'scripted'", "llm-cache": "false", "encoder": "'tiny'",
        "agentcf-users": "20", "agentcf-kmeans-k": "6", "agentcf-synthetic-trend": "0.6"}


def main() -> None:
    """Run both, compare, write ``compare.json``; exit 1 when the metrics differ."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/agentcf-flwr-sim"))
    ap.add_argument("--nodes", type=int, default=2)
    args = ap.parse_args()
    work = args.out / "run"
    overrides = " ".join(f"{k}={v}" for k, v in KEYS.items())
    subprocess.run([sys.executable, "-m", "florec.sim.cli", "sim", "--dataset", "synthetic",
                    "--model", "agentcf++", "--nodes", str(args.nodes), "--rounds", "1",
                    "--out", str(work), "--overwrite", "-c", overrides], check=True)
    flower = json.loads((work / "results.json").read_text())["runs"][0]

    from florec.recdata.runconfig import parse_run_config
    from florec.sim.central_agentcf import run_federated_agentcf

    cfg = parse_run_config({"model": "agentcf++", "dataset": "synthetic"}
                           | {k: json.loads(v.replace("'", '"')) for k, v in KEYS.items()})
    local = run_federated_agentcf(cfg, args.nodes)
    same = all(abs(flower["metrics"][k] - local["metrics"][k]) < 1e-12
               for k in ("mrr", "ndcg@1", "ndcg@5", "ndcg@10"))
    out = {"config": KEYS, "nodes": args.nodes, "equal_metrics": same,
           **{name: {k: run[k] for k in ("metrics", "bytes_up", "bytes_down", "train")}
              for name, run in (("flwr_run", flower), ("in_process", local))}}
    for name in ("config.json", "results.json"):
        shutil.copy(work / name, args.out / f"flwr-run-{name}")
    shutil.rmtree(work)
    (args.out / "compare.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("equal_metrics", "flwr_run", "in_process")}, indent=1))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
