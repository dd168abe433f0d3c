"""Norms of benign users' item-row changes on a bench config (sets PipAttack's stealth bound).

PipAttack (Zhang et al., WSDM 2022) keeps its poisoned updates close to the benign ones (its
distance constraint); FloRec's ``pipattack`` replaces that term by ``attack-norm``, a bound on
each uploaded row's L2 norm. This script measures what a benign row change looks like: it runs
a clean cell of ``--config`` (``defense='median'``, so nodes upload per-user rows) for
``--rounds`` rounds and records the L2 norm of every uploaded row ``[dV_ui, db_ui]``.

Run::

    FLOREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/attack_row_norms.py \
        --config bench/attacks_ml1m.toml --out docs/results/attacks_ml1m_row_norms
"""

from __future__ import annotations

import argparse
import json
import tempfile
import tomllib
from pathlib import Path

import numpy as np

from florec.recdata.runconfig import parse_run_config
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies import robust

QUANTILES = (0.5, 0.9, 0.99)


def benign_row_norms(config: dict, rounds: int) -> list[np.ndarray]:
    """Per-round arrays of the uploaded rows' L2 norms in a clean run of ``config``.

    Parameters
    ----------
    config : dict
        A run config; the run is made clean (no attack) with ``defense='median'`` (per-user
        rows, no norm bound) and ``rounds`` rounds.
    rounds : int
        Rounds to run.

    Returns
    -------
    list of np.ndarray
        One array per round: ``||[dV_ui, db_ui]||_2`` of every row every user uploaded.

    """
    norms: list[np.ndarray] = []
    aggregate = robust.row_aggregate

    def recording(items, emb, bias, defense, trim):  # the rows as the server receives them
        norms.append(np.sqrt((emb ** 2).sum(1) + bias ** 2))
        return aggregate(items, emb, bias, defense, trim)

    cfg = parse_run_config(config | {"attack": "none", "attack-fraction": 0.0,
                                     "defense": "median", "num-rounds": rounds,
                                     "eval-every": rounds})
    robust.row_aggregate = recording
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_federated(LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False), cfg,
                          Path(tmp) / "run")
    finally:
        robust.row_aggregate = aggregate
    return norms


def main() -> None:
    """Measure and write ``row_norms.json`` (quantiles per round)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    spec = tomllib.loads(args.config.read_text())
    config = dict(spec["base"]) | {"dataset": spec["bench"]["dataset"], "seed": args.seed}
    rows = [{"round": r + 1, "rows": int(len(n)), "mean": float(n.mean())}
            | {f"q{q:g}": float(np.quantile(n, q)) for q in QUANTILES}
            for r, n in enumerate(benign_row_norms(config, args.rounds))]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "row_norms.json").write_text(json.dumps(
        {"config": str(args.config), "seed": args.seed, "rounds": rows}, indent=1) + "\n")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
