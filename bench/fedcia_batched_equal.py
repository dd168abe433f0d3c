"""FedCIA-MF on real data: the batched node trainer against each client trained on its own.

Every client of the authors' protocol on ``fedcia-ml100k`` (100 clients, d=64, lr 0.1, batches
of 4,096; ``bench/perf_ratios.py``'s ``FEDCIA``) trains ``--rounds`` rounds of local epochs
from a fresh model, its state kept between rounds, twice: node by node with
:func:`florec.client.trainers.private_batch.train_mf_clients` and client by client with
:func:`florec.client.trainers.private_model.train_one_by_one` (its own MF, autograd and
``torch.optim.Adam``). Per round it records the largest absolute difference of every stored
quantity (tables, Adam moments of every row, steps) and of the epoch losses, and how many
entries differ at all.

Run: ``OMP_NUM_THREADS=1 python bench/fedcia_batched_equal.py --rounds 3
--out docs/results/perf/fedcia_batched_equal.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from florec.client.trainers.private_batch import fresh_states, train_mf_clients
from florec.client.trainers.private_model import (
    MODEL_KEY,
    OPT_KEY,
    config_clients,
    train_one_by_one,
)
from florec.recdata.runconfig import parse_run_config
from florec.recdata.seeds import Salt, stream
from florec.recdata.store import get_split
from florec.sim.perf import save_measurement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_ratios import FEDCIA  # noqa: E402


def dense(state: dict) -> dict[str, np.ndarray]:
    """A state's arrays with moments of every row (compact item moments expanded)."""
    out = {f"{MODEL_KEY}/{k}": v for k, v in state[MODEL_KEY].items()}
    opt = state[OPT_KEY]
    for key, value in opt.items():
        p, name = key.split(".", 1)
        if name == "rows":
            continue
        rows = opt.get(f"{p}.rows")
        if rows is not None and name != "step":
            full = np.zeros(state[MODEL_KEY][("user_emb", "item_emb", "item_bias")[int(p)]].shape,
                            dtype=value.dtype)
            full[rows] = value
            value = full
        out[f"{OPT_KEY}/{key}"] = np.ravel(value) if name == "step" else value
    return out


def compare(overrides: dict, rounds: int) -> list[dict]:
    """Per round: the largest |batched - one by one| of each quantity and of the losses."""
    cfg = parse_run_config(overrides)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    clients, triples = config_clients(split, cfg)
    n = len(clients)
    batched = reference = fresh_states(clients, cfg.dim, cfg.seed, cfg.init_std)
    args = (cfg.local_epochs, cfg.local_batch_size, cfg.lr, cfg.reg)
    rows = []
    for rnd in range(1, rounds + 1):
        rngs = [stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, k) for k in range(n)]
        new, got = [], []
        for first in range(0, n, cfg.clients_per_node):  # node by node
            part = slice(first, first + cfg.clients_per_node)
            states, losses = train_mf_clients(batched[part], triples[part], rngs[part], *args)
            new, got = new + states, got + losses
        batched = new
        reference, want = train_one_by_one(
            reference, triples, [stream(cfg.seed, Salt.PRIVATE_ROUND, rnd, k) for k in range(n)],
            *args)
        diffs: dict[str, float] = {}
        differing = 0
        for b, r in zip(batched, reference, strict=True):
            b, r = dense(b), dense(r)
            for key in r:
                gap = np.abs(b[key].astype(np.float64) - r[key])
                diffs[key] = max(diffs.get(key, 0.0), float(gap.max(initial=0.0)))
                differing += int((gap > 0).sum())
        rows.append({"round": rnd, "max_abs_diff": diffs, "entries_differing": differing,
                     "max_abs_loss_diff": max(abs(x - y) for g, w in zip(got, want, strict=True)
                                              for x, y in zip(g, w, strict=True))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Compare the two trainers on the chosen dataset; one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fedcia-ml100k")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = FEDCIA | {"dataset": args.dataset}
    save_measurement(args.out, {
        "command": f"OMP_NUM_THREADS=1 python bench/fedcia_batched_equal.py --dataset "
                   f"{args.dataset} --rounds {args.rounds}",
        "config": overrides, "rounds": compare(overrides, args.rounds)})


if __name__ == "__main__":
    main()
