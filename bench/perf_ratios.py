"""One federated round over all users against one central epoch: fair MF, FedCIA-MF, SASRec.

Issue 17 part 1 asks, beyond FedAvg-MF (:func:`florec.sim.perf.compute_ratio`), for the ratio
"in-process compute of one round in which every user trains one local epoch / one central epoch
on the same training interactions, same model and loss" of the other trainers. Each function
here builds both sides once, then times them alternately in this one process (``reps`` pairs,
medians; the ratio is the median of the per-pair ratios), so the ratio survives a shared box.
No Flower, no serialisation: what is timed is the trainers' arithmetic.

- :func:`fair_ratio`: ``mf-loss`` = fs-pair / ubpr / fs-point / wmf / relmf / du. Central:
  :func:`florec.sim.central_fair.fair_mf` (Adam over both tables, batches of
  ``central_batch``); federated: :func:`florec.client.trainers.fair_embedding.fair_local_update`
  over every bucket, given the training popularity and U (what the fair strategy's secure sum
  sends).
- :func:`fedcia_ratio`: every FedCIA client's private MF (its own item table and Adam) trains one
  local epoch over its fixed triples, node by node as a FedCIA node trains its
  ``clients-per-node`` clients (:func:`florec.client.trainers.private_batch.train_mf_clients`,
  batched; each client's result is its own model's); central:
  :func:`florec.client.trainers.private_model.local_epoch` on one MF over all users and the union
  of the clients' triples (same batch size, so only the split into clients differs).
- :func:`seq_ratio`: the sequential node's round (every bucket loads the global SASRec, builds
  its Adam and trains one epoch over its users' windows,
  :func:`florec.client.trainers.sequential.train_epoch`) against a central epoch over all
  windows.

Run: ``OMP_NUM_THREADS=1 python bench/perf_ratios.py --which fair,fedcia,seq
--out docs/results/perf/ratios.json`` (``python bench/perf_ratios.py -h`` for the knobs);
``--table FILE...`` prints the docs' table; ``--profile PREFIX`` also profiles one more round.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.store import get_split
from florec.sim.perf import save_measurement

#: where :func:`side_by_side` writes a cProfile of one more federated round (``--profile``)
PROFILE: dict[str, Path] = {}


def side_by_side(central: Callable[[], None], federated: Callable[[], None], reps: int
                 ) -> dict[str, float]:
    """Time ``central`` then ``federated``, ``reps`` times; medians and the ratio.

    Returns ``central_epoch_s``, ``round_s`` (medians) and ``round_over_central_epoch``, the
    median over repetitions of ``round_s[r] / central_epoch_s[r]``. If ``PROFILE["out"]`` is
    set, one more federated round then runs under cProfile and its stats go to that file.
    """
    times: dict[str, list[float]] = {"central_epoch_s": [], "round_s": []}
    for _ in range(reps):
        for key, fn in (("central_epoch_s", central), ("round_s", federated)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    if "out" in PROFILE:
        cProfile.runctx("federated()", {}, {"federated": federated}, str(PROFILE["out"]))
    ratios = [f / c for f, c in zip(times["round_s"], times["central_epoch_s"], strict=True)]
    return {k: statistics.median(v) for k, v in times.items()} | {
        "round_over_central_epoch": statistics.median(ratios), "reps": reps}


def _buckets(cfg: RunConfig, split: Any) -> list[Any]:
    from florec.client.trainers.bucket import Bucket
    from florec.recdata.partition import partition_users

    parts = partition_users(split.n_users, num_nodes=cfg.num_nodes,
                            users_per_node=cfg.users_per_node)
    return [Bucket.from_split(split, u) for u in parts]


def fair_ratio(overrides: dict[str, Any], reps: int, central_batch: int = 1024
               ) -> dict[str, Any]:
    """A round of :func:`fair_local_update` over all buckets against a ``FairTrainer`` epoch."""
    from florec.client.trainers.bpr_embedding import LocalConfig
    from florec.client.trainers.fair_embedding import fair_local_update
    from florec.models.base import seeded_rows
    from florec.models.mf import MF, USER_SALT
    from florec.recdata.fair_sampling import TrainIndex
    from florec.sim.central_fair import fair_mf

    cfg = parse_run_config(overrides)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    train = split.matrix("train")
    pop = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    index = TrainIndex.from_csr(train, "cpu")
    buckets = _buckets(cfg, split)
    init = MF(split.n_users, split.n_items, dim=cfg.dim, seed=cfg.seed, init_std=cfg.init_std)
    item_emb = init.item_emb.detach().numpy().copy()
    item_bias = np.zeros(split.n_items, dtype=np.float32)
    user_embs = [seeded_rows(b.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)
                 for b in buckets]
    local_cfg = LocalConfig.from_run_config(cfg, 1)

    def federated() -> None:
        for bucket, user_emb in zip(buckets, user_embs, strict=True):
            fair_local_update(bucket, item_emb, item_bias, user_emb, local_cfg, 1,
                              item_pop=pop, n_users=split.n_users)

    return {"trainer": f"fair-{cfg.mf_loss}", "dataset": cfg.dataset, "users": split.n_users,
            "items": split.n_items, "interactions": int(train.nnz), "nodes": len(buckets),
            "local_batch": cfg.local_batch_size, "central_batch": central_batch,
            } | side_by_side(lambda: fair_mf(cfg, index)[1].epoch(central_batch), federated, reps)


def union_triples(users: list[np.ndarray], triples: list[tuple[np.ndarray, ...]]
                  ) -> tuple[np.ndarray, ...]:
    """The clients' (user, positive, negative) triples in one set, users as global ids.

    ``users[k]`` maps client ``k``'s local user rows (``triples[k][0]``) to global ids.
    """
    return tuple(np.concatenate([u[t[0]] if j == 0 else t[j]
                                 for u, t in zip(users, triples, strict=True)])
                 for j in range(3))


def fedcia_ratio(overrides: dict[str, Any], reps: int) -> dict[str, Any]:
    """Every FedCIA client's local epoch against one epoch of one MF over all of them.

    Clients are ``num-nodes x clients-per-node`` groups of users (``partition``, e.g. FedCIA's
    ``floor``); each has its own MF (its users, the whole item table), its own Adam and its
    fixed triples (:func:`config_clients`). Each node's clients start from fresh models
    (:func:`fresh_states`) and train batched (:func:`train_mf_clients`), as a FedCIA node's
    first round does. The central side trains one MF over all users on the concatenated
    triples (client rows mapped back to global user ids), same batch size.
    """
    from florec.client.trainers.bucket import Bucket
    from florec.client.trainers.private_batch import fresh_states, train_mf_clients
    from florec.client.trainers.private_model import build_node_model, config_clients, local_epoch
    from florec.recdata.seeds import Salt, stream

    cfg = parse_run_config(overrides)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    clients, triples = config_clients(split, cfg)
    n_clients = len(clients)
    whole = Bucket.from_split(split, np.arange(split.n_users))
    union = union_triples([c.users for c in clients], triples)

    def train(bucket: Bucket, trip: tuple[np.ndarray, ...], k: int) -> None:
        model = build_node_model(cfg, bucket, "mf", cfg.dim)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        local_epoch(model, opt, trip, cfg.local_batch_size, stream(cfg.seed, Salt.PRIVATE_ROUND,
                                                                   1, k))

    def federated() -> None:
        for first in range(0, n_clients, cfg.clients_per_node):
            ks = range(first, min(first + cfg.clients_per_node, n_clients))
            train_mf_clients(fresh_states([clients[k] for k in ks], cfg.dim, cfg.seed,
                                          cfg.init_std),
                             [triples[k] for k in ks],
                             [stream(cfg.seed, Salt.PRIVATE_ROUND, 1, k) for k in ks], 1,
                             cfg.local_batch_size, cfg.lr, cfg.reg)

    return {"trainer": "fedcia-mf", "dataset": cfg.dataset, "users": split.n_users,
            "items": split.n_items, "interactions": int(len(union[0])), "clients": n_clients,
            "local_batch": cfg.local_batch_size, "central_batch": cfg.local_batch_size,
            } | side_by_side(lambda: train(whole, union, 0), federated, reps)


def seq_ratio(overrides: dict[str, Any], reps: int, central_batch: int = 256) -> dict[str, Any]:
    """The sequential node's round over all buckets against a central epoch (same windows)."""
    from florec.client.trainers.sequential import make_optimizers, train_epoch
    from florec.models.registry import sequential_from_config
    from florec.recdata.sequences import UserSequences

    cfg = parse_run_config(overrides)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir, cfg.min_rating,
                         cfg.synthetic_params())
    seqs = UserSequences.from_split(split)
    buckets = _buckets(cfg, split)
    windows = [seqs.inputs(b.users, "train", cfg.max_seq_len) for b in buckets]
    torch.manual_seed(cfg.seed)
    state = sequential_from_config(cfg, split.n_items).shared_state()

    def epoch(win: np.ndarray, batch: int) -> None:
        model = sequential_from_config(cfg, split.n_items)
        model.load_shared_state(state)
        train_epoch(model, make_optimizers(model, cfg.lr), win, split.n_items,
                    np.random.default_rng(cfg.seed), batch, cfg.seq_loss)

    def federated() -> None:
        for win in windows:
            epoch(win, cfg.local_batch_size)

    everyone = np.concatenate(windows)
    return {"trainer": f"seq-{cfg.model}", "dataset": cfg.dataset, "users": split.n_users,
            "items": split.n_items, "positions": int((everyone > 0).sum()),
            "nodes": len(buckets), "local_batch": cfg.local_batch_size,
            "central_batch": central_batch,
            } | side_by_side(lambda: epoch(everyone, central_batch), federated, reps)


#: each measured trainer: its function and run-config overrides (the bench settings of its
#: method: fair_ml1m.toml's federated lr/weight decay, fedcia.md's authors' protocol,
#: sequential.toml's SASRec)
FAIR = {"algorithm": "fedavg", "model": "mf", "split": "ratio-fs", "dim": 64, "init-std": 0.1,
        "lr": 0.01, "weight-decay": 1e-3, "users-per-node": 100, "local-batch-size": 64}
FEDCIA = {"algorithm": "fedcia", "model": "mf", "split": "given", "partition": "floor",
          "dim": 64, "num-nodes": 10, "clients-per-node": 10, "lr": 0.1,
          "local-batch-size": 4096}
SEQ = {"algorithm": "fedavg", "model": "sasrec", "split": "loo", "dim": 64, "max-seq-len": 50,
       "heads": 2, "seq-layers": 2, "dropout": 0.5, "seq-loss": "ce", "lr": 0.001,
       "num-nodes": 10, "local-batch-size": 256}


def write_profile(stats: Path, out: Path, top: int = 25) -> None:
    """The ``top`` functions of a cProfile dump by own time, then by cumulative time, as text."""
    text = io.StringIO()
    for key in ("tottime", "cumulative"):
        pstats.Stats(str(stats), stream=text).sort_stats(key).print_stats(top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    stats.unlink()


def ratio_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one line per measured trainer of these ``--out`` files, with its load."""
    lines = ["| trainer | dataset | users | clients / nodes | central epoch s | round s | "
             "round / central epoch | reps | load (1 min) |", "|" + "---|" * 9]
    for result in results:
        for r in result["rows"]:
            lines.append(
                f"| {r['trainer']} | {r['dataset']} | {r['users']:,} | "
                f"{r.get('clients', r.get('nodes'))} | {r['central_epoch_s']:.2f} | "
                f"{r['round_s']:.2f} | **{r['round_over_central_epoch']:.2f}x** | {r['reps']} | "
                + "-".join(f"{x:.1f}" for x in r["load_avg_1m"]) + " |")
    return "\n".join(lines)


def main() -> None:
    """Measure the chosen trainers; one JSON object (config, load, a row per trainer)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", default="fair,fedcia,seq")
    parser.add_argument("--fair-losses", default="fs-pair,ubpr")
    parser.add_argument("--fair-dataset", default="ml-1m")
    parser.add_argument("--fedcia-dataset", default="fedcia-ml100k")
    parser.add_argument("--seq-dataset", default="ml-100k")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None,
                        help="also cProfile one more round of each trainer: FILE.<trainer>.txt")
    parser.add_argument("--table", type=Path, nargs="*", default=None,
                        help="instead: print the markdown table of these --out files")
    args = parser.parse_args()
    if args.table is not None:
        print(ratio_table([json.loads(p.read_text()) for p in args.table]))
        return
    torch.set_num_threads(1)
    which = set(args.which.split(","))
    jobs: list[tuple[Callable[..., dict[str, Any]], dict[str, Any]]] = []
    if "fair" in which:
        jobs += [(fair_ratio, FAIR | {"dataset": args.fair_dataset, "mf-loss": loss})
                 for loss in args.fair_losses.split(",") if loss]
    if "fedcia" in which:
        jobs.append((fedcia_ratio, FEDCIA | {"dataset": args.fedcia_dataset}))
    if "seq" in which:
        jobs.append((seq_ratio, SEQ | {"dataset": args.seq_dataset}))
    rows = []
    for fn, overrides in jobs:
        load = os.getloadavg()[0]
        if args.profile is not None:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            PROFILE["out"] = args.profile.with_suffix(".prof")
        row = fn(overrides, args.reps) | {"config": overrides,
                                          "load_avg_1m": [load, os.getloadavg()[0]]}
        print(json.dumps(row), flush=True)
        if args.profile is not None:
            write_profile(PROFILE["out"], Path(f"{args.profile}.{row['trainer']}.txt"))
        rows.append(row)
    result = {"command": "OMP_NUM_THREADS=1 python bench/perf_ratios.py " + " ".join(
                  f"--{k.replace('_', '-')} '{v}'" for k, v in vars(args).items()
                  if k not in ("out", "table", "profile")),
              "rows": rows}
    save_measurement(args.out, result)


if __name__ == "__main__":
    main()
