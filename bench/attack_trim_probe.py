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
``bench/attack_trim_rows.py``'s.

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
from typing import Any, TextIO
from unittest import mock

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from florec.client.attacks import AttackKnowledge, knowledge_from_split
from florec.client.fedavg_node import PRIVATE_KEY
from florec.client.node_store import open_store
from florec.models.base import seeded_rows
from florec.models.exposure import exposure_sums
from florec.models.metrics import evaluate_users
from florec.models.mf import USER_SALT
from florec.models.user_refit import EVAL, refit_user_emb
from florec.protocol.codec import from_record
from florec.recdata.cohort import sample_cohort
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.splits import Split
from florec.recdata.store import get_split
from florec.server import federation
from florec.server.app import run_federated
from florec.sim.local_grid import LocalGrid
from florec.strategies.robust import RobustFedAvgRec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_trim_report import OUT, report  # noqa: E402 (bench/attack_trim_report.py)
from attack_trim_rows import K, attacker_rows, kept_share, saturation, user_rows  # noqa: E402
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


class Probe:
    """The analysis side: sampled benign users, their embeddings, the JSON-lines log.

    Parameters
    ----------
    cfg : RunConfig
        The probed run's config (seed, refit, defense trim, cohort).
    split : Split
        Its split: the probed users' train/valid/test rows and masks.
    know : AttackKnowledge
        The targets and the malicious users (excluded from the sample).
    n_users : int
        Benign users sampled among those who never interacted with a target.
    log : TextIO
        The JSON-lines file each round's line is written to.
    grid : LocalGrid, optional
        The in-process grid whose nodes' stored user embeddings the probe reads; without it
        the probed users keep their seeded rows.

    """

    def __init__(self, cfg: RunConfig, split: Split, know: AttackKnowledge, n_users: int,
                 log: TextIO, grid: LocalGrid | None = None) -> None:
        self.cfg, self.know, self.log, self.population = cfg, know, log, split.n_users
        self.grid = grid
        seen = split.matrix("train") + split.matrix("valid") + split.matrix("test")
        never = np.asarray(seen[:, know.targets].sum(axis=1)).ravel() == 0
        pool = np.flatnonzero(never & ~np.isin(np.arange(split.n_users), know.malicious))
        rng = np.random.default_rng(cfg.seed)
        self.users = np.sort(rng.choice(pool, size=min(n_users, len(pool)), replace=False))
        self.train = split.matrix("train")[self.users].tocsr()
        self.valid = split.matrix("valid")[self.users].tocsr()
        self.mask_valid = split.mask_for("valid")[self.users].tocsr()
        self.mask_test = split.mask_for("test")[self.users].tocsr()
        self.seen = seen[self.users].tocsr()
        self.emb = seeded_rows(self.users, cfg.dim, cfg.seed, cfg.init_std, USER_SALT)

    def load_stored(self, node_users: list[np.ndarray]) -> None:
        """Set the probed users' embeddings to what their nodes store after this round.

        Reads the private state of the in-process nodes (a real server cannot): the rows the
        run's next evaluation refits from. ``node_users[p]``: partition ``p``'s users in
        bucket order (the strategy's cohort map); users never trained keep their seeded rows.
        """
        if self.grid is None:
            return
        index = {int(u): j for j, u in enumerate(self.users)}
        for context in self.grid.contexts.values():
            saved = open_store(context, self.cfg.store_spill_mb).get(PRIVATE_KEY)
            if saved is None:
                continue
            users = node_users[int(context.node_config["partition-id"])]
            for row, user in enumerate(users.tolist()):
                if user in index:
                    self.emb[index[user]] = saved["user_emb"][row]

    def refit(self, table: dict[str, np.ndarray], server_round: int) -> np.ndarray:
        """The probed users' embeddings refitted to ``table`` (the evaluation's refit)."""
        return refit_user_emb(self.train, self.users, self.emb, table["item_emb"],
                              table["item_bias"], self.cfg.user_refit_steps,
                              self.cfg.user_refit_lr, self.cfg.reg, self.cfg.seed, server_round,
                              EVAL)

    def kth_item(self, scores: np.ndarray) -> np.ndarray:
        """Each probed user's ``K``-th best item of ``scores`` (n_probed, n_items).

        Ranked as the test evaluation ranks (train and valid items excluded), targets excluded:
        the item a target must beat to enter the user's top-``K``.
        """
        masked = np.array(scores, dtype=np.float64)
        masked[self.mask_test.nonzero()] = -np.inf
        masked[:, self.know.targets] = -np.inf
        return np.argsort(-masked, axis=1, kind="stable")[:, K - 1]

    def ahead(self, table: dict[str, np.ndarray], server_round: int) -> dict[str, float]:
        """Target and 10th-best scores, ER@10 and valid ndcg@10 of the probed users."""
        p = self.refit(table, server_round)
        v = torch.as_tensor(table["item_emb"], dtype=torch.float64)
        b = torch.as_tensor(table["item_bias"], dtype=torch.float64)
        scores = torch.as_tensor(p, dtype=torch.float64) @ v.T + b
        stale = torch.as_tensor(self.emb, dtype=torch.float64) @ v.T + b  # before the refit

        def score_fn(rows: torch.Tensor) -> torch.Tensor:
            return scores[rows]

        rows = np.arange(len(self.users))
        kth = scores[torch.as_tensor(rows), torch.as_tensor(self.kth_item(scores.numpy()))]
        exp = exposure_sums(score_fn, rows, self.mask_test, self.seen, self.know.targets, [K])
        acc = evaluate_users(score_fn, rows, self.mask_valid, self.valid, [K])
        n_acc = max(acc.get("num-users", 0.0), 1.0)
        return {"target_bias": float(b[self.know.targets].mean()),
                "target_score": float(scores[:, self.know.targets].mean()),
                "target_score_before_refit": float(stale[:, self.know.targets].mean()),
                "kth_score": float(kth.mean()),
                "margin": float((scores[:, self.know.targets] - kth[:, None]).mean()),
                "er@10": exp["exposure/er@10"] / max(exp["exposure/num-users"], 1.0),
                "valid_ndcg@10": acc["ndcg@10"] / n_acc}

    def record(self, server_round: int, rows: dict[str, np.ndarray],
               current: dict[str, np.ndarray], tables: dict[str, dict[str, np.ndarray]],
               deltas: dict[str, dict[str, np.ndarray]]) -> None:
        """Write one round's line (see the module docstring) and advance the user copy."""
        targets, beta = self.know.targets, self.cfg.defense_trim
        u_bar = self.emb.astype(np.float64).mean(axis=0)
        u_dir = u_bar / max(np.linalg.norm(u_bar), 1e-300)
        bad = attacker_rows(rows, targets) if self.cfg.attack != "none" else \
            np.zeros(len(rows["items"]), bool)
        emb, bias = rows["item_emb"].astype(np.float64), rows["item_bias"].astype(np.float64)
        per_target = []
        for t in targets.tolist():
            on = rows["items"] == t
            c = int(on.sum())
            entry: dict[str, Any] = {"item": t, "c": c, "malicious": int((on & bad).sum()),
                                     "trimmed_each_end": int(np.floor(beta * c))}
            entry["attackers_kept"] = kept_share(
                np.concatenate([emb[on], bias[on, None]], axis=1), bad[on], entry[
                    "trimmed_each_end"])
            for rule, d in deltas.items():
                dv, db = d["item_emb"][t], float(d["item_bias"][t])
                entry[f"norm_{rule}"] = float(np.sqrt(dv @ dv + db * db))
                entry[f"proj_{rule}"] = float(dv @ u_dir)
                entry[f"bias_{rule}"] = db
                entry[f"score_step_{rule}"] = float(dv @ u_bar + db)
            for part, sel in (("attackers", on & bad), ("benign", on & ~bad)):
                entry[f"score_step_sum_{part}"] = float(emb[sel].sum(0) @ u_bar + bias[sel].sum())
            per_target.append(entry)
        others = np.setdiff1d(np.arange(len(current["item_bias"])), targets)
        norm = {rule: float(np.sqrt((d["item_emb"][others] ** 2).sum()
                                    + (d["item_bias"][others] ** 2).sum()))
                for rule, d in deltas.items()}
        kth_item = self.kth_item(self.emb @ current["item_emb"].T + current["item_bias"])
        kth_step = {rule: float(np.mean(np.einsum("ud,ud->u", self.emb, d["item_emb"][kth_item])
                                        + d["item_bias"][kth_item]))
                    for rule, d in deltas.items()}
        ahead = {rule: self.ahead(table, server_round) for rule, table in tables.items()}
        cohort = sample_cohort(self.cfg.seed, server_round, self.population,
                               self.cfg.cohort_fraction, self.cfg.cohort_size)
        line = {"round": server_round, "uploaders": int(len(np.unique(rows["users"]))),
                "u_bar_norm": float(np.linalg.norm(u_bar)),
                "attackers_uploading": int(len(np.unique(rows["users"][bad]))),
                "attackers_in_cohort": int(np.isin(cohort, self.know.malicious).sum()),
                "targets": per_target,
                "others_norm_trim_over_sum": norm["trim"] / max(norm["sum"], 1e-300),
                "others_norm": norm, "kth_item_score_step": kth_step, "ahead": ahead}
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()


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
