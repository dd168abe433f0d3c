"""FedCIA seconds per round against the authors' code, side by side in one run (fedcia-ml100k).

The authors' round (github.com/Mingzhe-Han/FedCIA @ bbc4224, ``flalgorithm/fedcia_param.py``:
``train_client_model``, ``client_upload``, ``client_download``; ``model/MF.py``) is transcribed
below with its algorithm unchanged: per client one Adam epoch over its fixed triples (batch
4096), ``S_k = E_k E_k^T`` plus Laplace(0, 0.001) noise summed into an ``n x n`` mean, then 100
SGD steps (lr 0.1, weight decay 1e-6) of autograd on ``||E_k E_k^T - S_bar||_F``, client after
client. It runs on the authors' own client files (``fedcia/ml100k/<c>/train_dataset.npy``).
Their round is one loop body per client, and its cost is dense ``n x n`` arithmetic that is the
same for every client, so the bench times that body on ``--authors-clients`` clients and
reports 100 times their mean (a whole round takes an hour on a loaded shared machine).

FloRec's runs are the in-process federation (the real ServerApp loop and ClientApp handlers,
10 nodes of 10 clients, d=64, the paper's settings; ``bench/fedcia.py``'s configuration):
factored r=2d once before and once after the authors' rounds (so that a drifting load on a
shared machine weighs on both sides), and dense unless ``--skip-dense``. Its seconds per round
exclude evaluation (``seconds - eval_seconds`` in ``rounds.jsonl``), as the authors' phases do;
medians over the rounds.
Accuracy: each round's validation metrics beside those of the committed ``bench/fedcia.py``
runs of the same configuration (``docs/results/fedcia/paper/``: the previous code's factored
r=2d and dense runs).

Usage: OMP_NUM_THREADS=1 python bench/fedcia_speed.py --out docs/results/fedcia_speed
       [--authors-clients 4] [--rounds 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions.laplace import Laplace

from florec.recdata.datasets import resolve_data_root

PAPER = {"dataset": "fedcia-ml100k", "split": "given", "partition": "floor",
         "selection-metric": "f1@10", "algorithm": "fedcia", "num-nodes": 10,
         "clients-per-node": 10, "lr": 0.1, "local-batch-size": 4096, "dim": 64}


class AuthorsMF(torch.nn.Module):
    """``model/MF.py``: embeddings N(0, 0.1^2), the element-wise squared-error loss."""

    def __init__(self, n_users: int, n_items: int, dim: int, weight_decay: float) -> None:
        super().__init__()
        self.embedding_user = torch.nn.Embedding(n_users, dim)
        self.embedding_item = torch.nn.Embedding(n_items, dim)
        torch.nn.init.normal_(self.embedding_user.weight, std=0.1)
        torch.nn.init.normal_(self.embedding_item.weight, std=0.1)
        self.weight_decay = weight_decay
        self.mse = torch.nn.MSELoss()

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The authors' MF loss (squared error on each coordinate of the product)."""
        u, p, n = self.embedding_user(users), self.embedding_item(pos), self.embedding_item(neg)
        reg = 0.5 * (u.norm(2).pow(2) + p.norm(2).pow(2) + n.norm(2).pow(2)) / float(len(users))
        pos_scores, neg_scores = u * p, u * n
        loss = 0.5 * (self.mse(pos_scores, torch.ones_like(pos_scores))
                      + self.mse(neg_scores, torch.zeros_like(neg_scores)))
        return loss + reg * self.weight_decay

    def item_similarity(self) -> torch.Tensor:
        """``getItemSimilarity``: ``E E^T``."""
        emb = self.embedding_item.weight
        return emb @ emb.T


def authors_triples(train: np.ndarray, rng: np.random.Generator) -> torch.utils.data.DataLoader:
    """The client's fixed triples: |T| draws of (uniform user, its positive, a non-positive)."""
    users = np.flatnonzero(train.sum(1) > 0)
    rows = rng.choice(users, int(train.sum()))
    pos = np.array([rng.choice(np.flatnonzero(train[u])) for u in rows])
    neg = np.array([rng.choice(np.flatnonzero(train[u] == 0)) for u in rows])
    data = torch.utils.data.TensorDataset(*(torch.as_tensor(a) for a in (rows, pos, neg)))
    return torch.utils.data.DataLoader(data, batch_size=4096, shuffle=True)


def authors_clients(root: Path, sample: int, seed: int = 42) -> list[dict[str, float]]:
    """The authors' per-client loop body on ``sample`` of their 100 ML-100K clients.

    Per client, in the authors' order: its local epoch (``train_client_model``), its noisy
    similarity (``client_upload``) and its 100 alignment steps (``client_download``) against
    the mean of the sampled clients' uploads. Every phase but the tiny local epoch costs the
    same for every client (dense ``n x n`` arithmetic, whatever the data), so 100 times a
    client's seconds is the authors' round.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    folders = sorted((p for p in (root / "fedcia" / "ml100k").iterdir() if p.name.isdigit()),
                     key=lambda p: int(p.name))[:sample]
    trains = [np.load(f / "train_dataset.npy") for f in folders]
    n_items = trains[0].shape[1]
    models = [AuthorsMF(t.shape[0], n_items, 64, 1e-6) for t in trains]
    loaders = [authors_triples(t, rng) for t in trains]
    adam = [torch.optim.Adam(m.parameters(), lr=0.1) for m in models]
    sgd = [torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-6) for m in models]
    out = [{} for _ in models]
    server = torch.zeros(n_items, n_items)
    for model, loader, opt, row in zip(models, loaders, adam, out, strict=True):
        t0 = time.perf_counter()
        model.train()  # train_client_model
        for users, pos, neg in loader:
            loss = model.loss(users, pos, neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t1 = time.perf_counter()
        noise = Laplace(0, 0.001).sample((n_items, n_items))  # client_upload
        server += model.item_similarity().detach() + noise
        row |= {"train_s": t1 - t0, "upload_s": time.perf_counter() - t1}
    server /= len(models)
    for model, opt, row in zip(models, sgd, out, strict=True):  # client_download
        t0 = time.perf_counter()
        model.train()
        for _ in range(100):
            loss = torch.norm(model.item_similarity() - server, p=2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        row["align_s"] = time.perf_counter() - t0
        row["client_s"] = row["train_s"] + row["upload_s"] + row["align_s"]
    return out


def florec_run(label: str, extra: dict[str, Any], rounds: int, data_dir: str,
               out: Path) -> dict[str, Any]:
    """One in-process FloRec run; its per-round seconds without evaluation and test metrics."""
    from florec.recdata.runconfig import parse_run_config
    from florec.server.app import run_federated
    from florec.sim.bench import label_folder
    from florec.sim.local_grid import LocalGrid

    cfg = parse_run_config(PAPER | extra | {"num-rounds": rounds, "data-dir": data_dir})
    folder = out / label_folder(label)
    run = run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                        folder)
    rows = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    train = [r["seconds"] - r.get("eval_seconds", 0.0) for r in rows]
    return {"label": label, "round_s": train, "median_round_s": statistics.median(train),
            "align_s": [r.get("align", {}).get("align-seconds-sum", 0.0) for r in rows],
            "valid": [valid_row(r) for r in rows],
            "best_round": run["best_round"],
            "metrics": {k: run["metrics"][k] for k in ("precision@10", "recall@10", "f1@10",
                                                        "ndcg@10")}}


def valid_row(row: dict[str, Any]) -> dict[str, float]:
    """A round's validation P/R/F1/NDCG@10 (``rounds.jsonl``)."""
    return {k: row.get("valid", {}).get(k, float("nan"))
            for k in ("precision@10", "recall@10", "f1@10", "ndcg@10")}


def committed(folder: Path) -> list[dict[str, float]]:
    """Per-round validation metrics of a committed ``bench/fedcia.py`` run, if present."""
    path = folder / "rounds.jsonl"
    if not path.exists():
        return []
    return [valid_row(json.loads(x)) for x in path.read_text().splitlines()]


def main() -> None:
    """Run the authors' rounds and FloRec's, write ``speed.json`` and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/fedcia_speed"))
    ap.add_argument("--authors-clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--skip-dense", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = resolve_data_root(args.data_dir or None)
    if root is None:
        raise SystemExit("no data root: pass --data-dir or set FLOREC_DATA_DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    factored = {"fedcia-comm": "factored", "fedcia-rank": 128}
    # FloRec's factored run before and after the authors' rounds: a load that drifts during
    # the (long) authors' rounds weighs on both sides
    before = florec_run("FedCIA-MF factored r=2d (before)", factored, args.rounds,
                        args.data_dir, args.out)
    authors = authors_clients(root, args.authors_clients)
    after = florec_run("FedCIA-MF factored r=2d (after)", factored, args.rounds, args.data_dir,
                       args.out)
    both = before["round_s"] + after["round_s"]
    runs = [{"label": "FedCIA-MF factored r=2d", "round_s": both,
             "median_round_s": statistics.median(both), "runs": [before, after]}]
    if not args.skip_dense:
        runs.append(florec_run("FedCIA-MF dense", {"fedcia-comm": "dense"}, args.rounds,
                               args.data_dir, args.out))
    theirs = 100 * statistics.mean(r["client_s"] for r in authors)
    paper = Path("docs/results/fedcia/paper")  # the previous code's runs, same configuration
    reference = {label: committed(paper / label) for label in
                 ("FedCIA-MF-factored-r=2d", "FedCIA-MF-dense")}
    result = {"script": "bench/fedcia_speed.py", "authors_clients": authors,
              "authors_round_s": theirs, "florec": runs, "reference_valid": reference,
              "speedup": {r["label"]: theirs / r["median_round_s"] for r in runs},
              "env": {"python": platform.python_version(), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads(),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}}
    (args.out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"authors' code: {theirs:.1f} s/round (100 x the mean of {len(authors)} clients)")
    for r in runs:
        print(f"{r['label']}: {r['median_round_s']:.2f} s/round, "
              f"{theirs / r['median_round_s']:.1f}x faster")


if __name__ == "__main__":
    main()
