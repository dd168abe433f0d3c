r"""Why the trimmed mean lets more target exposure through than no defense (ML-1M, issue 18).

Runs one cell of ``bench/attacks_ml1m.toml`` (as ``cells`` of ``bench/attacks.py`` lists it, its
config built by ``cell_config``) with the ``trimmed-mean`` defense and, at every round, applies
BOTH rules to the SAME per-user uploads: the trimmed mean the run uses (``c_i`` times the row's
trimmed mean under ``aggregation='sum'``) and, as a counterfactual, the plain sum that defense
``none`` would have produced (same server optimiser state, on a copy; the run continues with the
trimmed mean).
Per round it logs, to one JSON line:

- for each target row ``i``: the ``c_i`` users that changed it, the malicious ones among them,
  ``floor(beta c_i)`` (values trimmed from each end), the norm of the row change
  ``[dV_i, db_i]`` under each rule, its projection on the mean benign-user embedding direction
  ``u_bar / ||u_bar||``, and the mean score step it gives the benign users,
  ``u_bar . dV_i + db_i``, with the sum's split into the attackers' and the benign users' parts;
- for all other rows: ``||dX_trim|| / ||dX_sum||`` (Frobenius norms over emb and bias) and the
  score step of each probed user's current 10th-best item;
- for benign users who never interacted with a target (a seeded sample, ``--users``), the model
  each rule gives one step ahead: each user's embedding as its node stores it after the round
  (read from the in-process nodes, which a real server cannot do) refitted to the new item
  table as the run's evaluation does (``user-refit-steps`` Adam steps on the same negatives,
  :func:`refit_user_emb`), then the mean target score (also before the refit), the mean
  10th-best non-target score (what a target must beat), ER@10
  (:func:`florec.models.exposure.exposure_sums`) and validation ndcg@10
  (:func:`florec.models.metrics.evaluate_users`) on those users. They use the evaluation's
  functions but are not checked to equal the run's own evaluation restricted to the sample
  (``docs/attacks.md`` compares the sample's ER@10 with the run's at the evaluated rounds).

With ``--follow sum`` the run continues with the plain sum instead (the undefended cell's
trajectory; the nodes still upload per-user rows) and the trimmed mean is the counterfactual.
``--saturation`` tabulates FedRecAttack's step against the lead its targets already have.
``--grid`` probes the cell of a named grid of the config (its own run config, e.g.
``pip-stealth``'s ``attack-norm``). The tables of the files are ``bench/attack_trim_report.py``'s
(printed after a run, or alone with ``--report``); the row helpers and ``--saturation`` are
``bench/attack_trim_rows.py``'s; the probed users and the per-round line, :class:`Probe`, are
``bench/attack_trim_analysis.py``'s.

Usage (from the repository root; ``--attack none`` for the clean probe)::

    OMP_NUM_THREADS=1 FLOREC_DATA_DIR=/work/shared/data nice -n 10 setsid \
      .venv/bin/python bench/attack_trim_probe.py --attack fedrecattack --fraction 0.005
    .venv/bin/python bench/attack_trim_report.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from florec.client.attacks import knowledge_from_split
from florec.protocol.codec import from_record
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.store import get_split
from florec.server import federation
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.robust import RobustFedAvgRec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_trim_analysis import Probe  # noqa: E402 (bench/attack_trim_analysis.py)
from attack_trim_report import OUT, report  # noqa: E402 (bench/attack_trim_report.py)
from attack_trim_rows import saturation, user_rows  # noqa: E402 (bench/attack_trim_rows.py)
from attacks import cell_config, cells  # noqa: E402 (bench/attacks.py: the bench's own config)


class _Recording:
    """A server optimiser that remembers the aggregated ``delta`` it was stepped with."""

    def __init__(self, opt: Any) -> None:
        self.opt, self.delta = opt, {}

    def step(self, current: dict[str, np.ndarray], delta: dict[str, np.ndarray],
             server_round: int) -> dict[str, np.ndarray]:
        self.delta = {k: np.asarray(v, np.float64).copy() for k, v in delta.items()}
        return self.opt.step(current, delta, server_round)


def apply_rule(strategy: RobustFedAvgRec, server_round: int, replies: list[Message],
               defense: str, counterfactual: bool
               ) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, np.ndarray]]:
    """The strategy's user-level aggregation of ``replies`` under ``defense``.

    Parameters
    ----------
    strategy : RobustFedAvgRec
        A strategy with a user-level defense (per-user uploads).
    server_round : int
        The round.
    replies : list of Message
        Per-user uploads (:mod:`florec.protocol.user_rows`).
    defense : str
        ``none`` is the plain sum / mean of the rows (as ``aggregation`` says).
    counterfactual : bool
        Leave the strategy as it was (server optimiser moments, bytes, dropped replies).

    Returns
    -------
    (ArrayRecord, MetricRecord, dict)
        The new global table, the round metrics and the aggregated change the server optimiser
        was stepped with (``item_emb`` (n, d), ``item_bias`` (n,)).

    """
    saved = strategy.server_opt, strategy.defense, strategy.bytes_up, len(strategy.dropped)
    rec = _Recording(copy.deepcopy(saved[0]) if counterfactual else saved[0])
    strategy.server_opt, strategy.defense = rec, defense
    try:
        arrays, metrics = RobustFedAvgRec._user_level(strategy, server_round, replies)
    finally:
        strategy.server_opt, strategy.defense = saved[0], saved[1]
        if counterfactual:
            strategy.bytes_up = saved[2]
            del strategy.dropped[saved[3]:]
    return arrays, metrics, rec.delta




class TrimProbe(RobustFedAvgRec):
    """:class:`RobustFedAvgRec` that also computes the plain sum of each round's uploads."""

    probe: Probe | None = None
    #: the rule whose result the run continues with (``sum``: the undefended trajectory)
    follow: str = "trim"

    def _user_level(self, server_round: int, replies: Iterable[Message]
                    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        current = {k: np.asarray(self.current[k], np.float64).copy()
                   for k in ("item_emb", "item_bias")}
        out = {}
        # the counterfactual first, on a copy of the optimiser as it was before the round; the
        # followed rule then steps the real one (run the other way round, the counterfactual
        # would see the momentum the followed rule just updated)
        for rule in sorted(("sum", "trim"), key=lambda r: r == self.follow):  # followed last
            out[rule] = apply_rule(self, server_round, replies,
                                   "none" if rule == "sum" else self.defense,
                                   counterfactual=rule != self.follow)
        if self.probe is not None and all(o[0] is not None for o in out.values()):
            self.probe.load_stored(self.node_users)
            self.probe.record(server_round, user_rows(replies), current,
                              {r: from_record(o[0]) for r, o in out.items()},
                              {r: o[2] for r, o in out.items()})
        return out[self.follow][:2]


def trim_cell(spec: dict[str, Any], attack: str, fraction: float, seed: int,
              grid: str | None = None) -> dict[str, Any]:
    """The bench's ``trimmed-mean`` cell of ``attack``, ``fraction`` and ``seed``.

    Parameters
    ----------
    spec : dict
        A bench config (``bench/attacks_ml1m.toml``).
    attack, fraction, seed
        The cell's keys.
    grid : str, optional
        The grid's name; without it, a cell of a grid without its own run config.

    Returns
    -------
    dict
        The cell as :func:`attacks.cells` lists it (``grid_config`` included).

    Raises
    ------
    ConfigError
        No such cell in ``spec``.

    """
    for cell in cells(spec, {grid} if grid else None):
        if (cell["attack"], cell["fraction"], cell["defense"], cell["seed"]) == \
                (attack, fraction, "trimmed-mean", seed) and (grid or not cell["grid_config"]):
            return cell
    raise ConfigError(f"no trimmed-mean cell {attack} f{fraction:g} s{seed} in grid "
                      f"{grid or '(any without its own config)'}: pick --attack, --fraction, "
                      "--seed and --grid from the bench config's grids")


def run_probe(spec: dict[str, Any], attack: str, fraction: float, seed: int, n_users: int,
              out: Path, follow: str = "trim", grid: str | None = None) -> Path:
    """Run one trimmed-mean cell of a bench config with the probe.

    Parameters
    ----------
    spec : dict
        The bench config; the cell's run config is ``cell_config`` of :func:`trim_cell`
        (so a grid's own config applies as the bench applies it).
    attack, fraction, seed
        The cell.
    n_users : int
        Benign users probed (:class:`Probe`).
    out : Path
        Folder of the JSON-lines file (created if missing).
    follow : {"trim", "sum"}
        The rule the run continues with; with ``sum`` the run continues with the plain sum
        (the undefended cell's trajectory; nodes still upload per-user rows) and the trimmed
        mean is the counterfactual.
    grid : str, optional
        The grid of the cell (:func:`trim_cell`); its name prefixes the file's if the grid has
        its own config.

    Returns
    -------
    Path
        ``out / '[<grid>-]<attack>-f<fraction>-s<seed>-follow-<follow>.jsonl'``.

    """
    cell = trim_cell(spec, attack, fraction, seed, grid)
    config = cell_config(spec, cell)
    cfg = parse_run_config(config)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, None, cfg.min_rating)
    know = knowledge_from_split(cfg, split)
    prefix = f"{cell['grid']}-" if cell["grid_config"] else ""
    path = out / f"{prefix}{attack}-f{fraction:g}-s{seed}-follow-{follow}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    build = federation.build_strategy
    t0 = time.perf_counter()
    with path.open("w") as log:
        grid = LocalGrid(cfg.to_flower(), cfg.num_nodes, keep_replies=False)
        probe = Probe(cfg, split, know, n_users, log, grid)
        log.write(json.dumps({"kind": "config", "config": config, "follow": follow,
                              "probe_users": len(probe.users),
                              "targets": know.targets.tolist(),
                              "malicious": know.malicious.tolist()}) + "\n")

        def probed(*args: Any, **kwargs: Any) -> tuple[Any, ArrayRecord]:
            strategy, arrays = build(*args, **kwargs)
            if type(strategy) is not RobustFedAvgRec:
                raise SystemExit(f"the probe needs RobustFedAvgRec, got {type(strategy)}")
            strategy.__class__ = TrimProbe
            strategy.probe, strategy.follow = probe, follow
            return strategy, arrays

        with mock.patch.object(federation, "build_strategy", probed), \
                tempfile.TemporaryDirectory() as tmp:
            result = run_federated(grid, cfg, Path(tmp) / "run")
            curve = [json.loads(x) for x in (Path(tmp) / "run" / "rounds.jsonl").read_text()
                     .splitlines()]
        log.write(json.dumps({"kind": "run", "metrics": result["metrics"],
                              "best_round": result["best_round"],
                              "wall_s": time.perf_counter() - t0,
                              "curve": [{"round": r["round"], "er@10": r["valid"].get("er@10"),
                                         "ndcg@10": r["valid"].get("ndcg@10")}
                                        for r in curve if "valid" in r]}) + "\n")
    return path


def main() -> None:
    """Run a probe (or print the report of the probe files)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("bench/attacks_ml1m.toml"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--attack", default="fedrecattack")
    parser.add_argument("--fraction", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=1000, help="benign users probed")
    parser.add_argument("--grid", default=None,
                        help="the grid of the cell (default: one without its own config)")
    parser.add_argument("--follow", choices=("trim", "sum"), default="trim",
                        help="the rule the run continues with (the other is the counterfactual)")
    parser.add_argument("--report", action="store_true",
                        help="print the tables only (as bench/attack_trim_report.py)")
    parser.add_argument("--saturation", action="store_true",
                        help="write saturation.json: FedRecAttack's step vs the targets' lead")
    args = parser.parse_args()
    if args.saturation:
        rows = saturation()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "saturation.json").write_text(json.dumps(rows, indent=1) + "\n")
        print("\n".join(f"lead {r['margin']:g}: step norm {r['step_norm']:.4f}" for r in rows))
        return
    if not args.report:
        fraction = 0.0 if args.attack == "none" else args.fraction
        run_probe(tomllib.loads(args.config.read_text()), args.attack, fraction, args.seed,
                  args.users, args.out, args.follow, args.grid)
    print(report(args.out))


if __name__ == "__main__":
    main()
