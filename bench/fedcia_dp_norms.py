"""The size of FedCIA clients' similarity uploads, to choose the DP clip ``dp-clip``.

Trains every client of the authors' 100-client ML-100K split for ``--rounds`` local epochs (no
alignment, so the norms of the first rounds) with FedCIA-MF's settings, and prints the quantiles
of ``||E_k E_k^T||_F`` (:func:`florec.protocol.similarity_dp.similarity_norm`) per round as JSON.

Run: FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/fedcia_dp_norms.py \
       --out docs/results/dp_fedcia/norms.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from florec.client.trainers.bucket import Bucket
from florec.client.trainers.private_model import build_node_model, fixed_triples, local_epoch
from florec.protocol.similarity_dp import similarity_norm
from florec.recdata.partition import node_clients
from florec.recdata.runconfig import parse_run_config
from florec.recdata.seeds import Salt, stream
from florec.recdata.store import get_split


def main() -> None:
    """Print and write the per-round quantiles of the clients' similarity norms."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = parse_run_config({"dataset": "fedcia-ml100k", "split": "given", "partition": "floor",
                            "algorithm": "fedcia", "num-nodes": 10, "clients-per-node": 10,
                            "lr": 0.1, "local-batch-size": 4096, "dim": 64})
    split, _ = get_split(cfg.dataset, cfg.split, cfg.seed)
    groups = [c for node in node_clients(split.n_users, num_nodes=cfg.num_nodes,
                                         clients_per_node=cfg.clients_per_node,
                                         mode=cfg.partition, seed=cfg.seed) for c in node]
    models = []
    for index, users in enumerate(groups):
        client = Bucket.from_split(split, users)
        model = build_node_model(cfg, client, cfg.model, cfg.dim)
        models.append((model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                       fixed_triples(client, cfg.seed, index)))
    out = {"clients": len(groups), "n_items": split.n_items, "rounds": []}
    for rnd in range(1, args.rounds + 1):
        norms = []
        for index, (model, opt, triples) in enumerate(models):
            local_epoch(model, opt, triples, cfg.local_batch_size,
                        stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, index))
            norms.append(similarity_norm(model.item_emb.detach().numpy()))
        q = np.quantile(norms, [0.0, 0.1, 0.5, 0.9, 1.0])
        out["rounds"].append({"round": rnd, **{f"q{int(p * 100)}": float(v)
                                               for p, v in zip((0, .1, .5, .9, 1), q,
                                                               strict=True)}})
        print(json.dumps(out["rounds"][-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
