"""Bytes each node's entries take in the node cache (issue 17, part 2: sizing its budget).

Serves every node of a run once through the ClientApp's own paths
(:func:`florec.client.app.node_setup` for the bucket and the shard it is cut from,
:func:`florec.client.seq_node.node_sequences` for a sequential model's sequences) with an
unbounded :class:`florec.recdata.node_cache.NodeCache`, then charges each entry its
:func:`~florec.recdata.node_cache.data_nbytes` and writes the mean and max per kind and per
node (``--out``), and how many nodes the default budget holds.

Examples
--------
OMP_NUM_THREADS=1 python bench/node_cache_sizes.py --dataset ml-1m --data-dir DATA \
    --users-per-node 100 --out docs/results/memory/node_cache/ml1m_61.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from flwr.app import Context, RecordDict

from florec.client import app, seq_node
from florec.recdata import node_cache as nc
from florec.recdata.shard import shards_in_memory


def main() -> None:
    """Measure and write the entry sizes (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--users-per-node", type=int, default=100)
    ap.add_argument("--model", default="sasrec", help="a sequential model: sequences cached too")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    run_config = {"dataset": args.dataset, "data-dir": args.data_dir, "model": args.model,
                  "users-per-node": args.users_per_node}
    cfg = app.parse_run_config(run_config)
    n = len(shards_in_memory(cfg)[0])
    nc.node_cache.cache_clear()
    cache = nc.node_cache()
    cache.max_bytes = 2**62  # keep everything: every entry is measured once all are built
    for pid in range(n):
        ctx = Context(run_id=1, node_id=pid + 1, state=RecordDict(), run_config=run_config,
                      node_config={"partition-id": pid, "num-partitions": n})
        app.node_setup(ctx)
        seq_node.node_sequences(ctx, cfg)
    kinds: dict[str, list[int]] = defaultdict(list)
    for key, value in cache._entries.items():
        kinds[key[0]].append(nc.data_nbytes(value))
    per_node = [sum(sizes[i] for sizes in kinds.values()) for i in range(n)]
    mib = 2**20
    out = {"dataset": args.dataset, "model": args.model, "users_per_node": args.users_per_node,
           "nodes": n, "default_budget_mib": nc.DEFAULT_CACHE_MB,
           "kinds": {k: {"mean_mib": sum(v) / len(v) / mib, "max_mib": max(v) / mib}
                     for k, v in kinds.items()},
           "node_mean_mib": sum(per_node) / n / mib, "node_max_mib": max(per_node) / mib,
           "nodes_in_default_budget": int(nc.DEFAULT_CACHE_MB * mib // (sum(per_node) / n))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
