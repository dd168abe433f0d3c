"""How far one local epoch moves the item rows a node holds and the rows it never sees.

The measurement behind ``aggregation='item-weighted'`` (docs/methods/sequential.md): from the
seeded global SASRec of ``bench/fedseq_converge_amazon.toml``'s "FedAvg-SASRec lr 5e-3" row (its
run config, read from the file; Amazon-Scientific, 10 nodes, Adam, batch 256, full-softmax CE;
``--lr`` replaces the row's), every node trains one local epoch, as in round 1
of a federated run, and reports the median L2 norm of the change of (a) the item rows that
occur in its training windows and (b) those that do not. Under plain FedAvg each row's change is
the position-weighted mean over the nodes, most of which do not hold the item.

Run: FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/fedseq_item_rows.py \
       --lr 0.005 --out docs/results/fedseq_converge_amazon/item_rows.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from florec.client.trainers.sequential import make_optimizers, train_epoch
from florec.models.registry import sequential_from_config
from florec.protocol.item_counts import item_counts
from florec.recdata.runconfig import parse_run_config
from florec.recdata.seeds import Salt, stream, torch_seed
from florec.recdata.sequences import UserSequences
from florec.recdata.shard import shard_of_node
from florec.sim.bench import cell_config, cells_of, load_bench

BENCH = Path(__file__).resolve().parent / "fedseq_converge_amazon.toml"
ROW = "FedAvg-SASRec lr 5e-3"


def row_config(lr: float, seed: int) -> dict[str, object]:
    """The run config of the bench row's cell of ``seed``, at node learning rate ``lr``."""
    conf = load_bench(BENCH)
    cell = next(c for c in cells_of(conf, Path("unused")) if c.label == ROW and c.seed == seed)
    return cell_config(conf, cell) | {"lr": lr}


def node_rows(config: dict[str, object]) -> list[dict[str, float]]:
    """Per node: items held, median change norm of held and unheld item rows."""
    cfg = parse_run_config(config)
    out = []
    for pid in range(cfg.num_nodes):
        shard = shard_of_node(cfg, {"partition-id": pid, "num-partitions": cfg.num_nodes})
        n_items = shard.split.n_items
        windows = UserSequences.from_split(shard.split).inputs(shard.users, "train",
                                                                cfg.max_seq_len)
        model = sequential_from_config(cfg, n_items)
        before = model.embedding.item.weight.detach().clone()
        torch.manual_seed(torch_seed(cfg.seed, Salt.SEQ_DROPOUT, 1, pid))
        train_epoch(model, make_optimizers(model, cfg.lr), windows, n_items,
                    stream(cfg.seed, Salt.SEQ_ROUND, 1, pid), cfg.local_batch_size)
        change = (model.embedding.item.weight.detach() - before).norm(dim=1).numpy()[1:]
        held = item_counts(windows, n_items)[1:] > 0
        out.append({"node": pid, "users": len(shard.users), "items_held": int(held.sum()),
                    "items": n_items, "median_change_held": float(np.median(change[held])),
                    "median_change_unheld": float(np.median(change[~held]))})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    """Measure and write the per-node rows and their medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    config = row_config(args.lr, args.seed)
    rows = node_rows(config)
    held = [r["items_held"] / r["items"] for r in rows]
    summary = {"config": config, "nodes": rows,
               "share_of_items_held": [min(held), max(held)],
               "ratio_unheld_to_held": [r["median_change_unheld"] / r["median_change_held"]
                                        for r in rows],
               "seconds": time.perf_counter() - t0}
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "nodes"}))


if __name__ == "__main__":
    main()
