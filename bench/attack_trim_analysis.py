"""The analysis side of the trimmed-mean probe (``bench/attack_trim_probe.py``, issue 18).

:class:`Probe` samples benign users who never interacted with a target, follows the embeddings
their nodes store, and writes one JSON line per round: the target rows' change under each rule,
the other rows' change and the probed users' model one step ahead under each rule (the fields
are listed in ``bench/attack_trim_probe.py``'s docstring). The run and the CLI are
``bench/attack_trim_probe.py``'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from florec.client.attacks import AttackKnowledge
from florec.client.fedavg_node import PRIVATE_KEY
from florec.client.node_store import open_store
from florec.models.base import seeded_rows
from florec.models.exposure import exposure_sums
from florec.models.metrics import evaluate_users
from florec.models.mf import USER_SALT
from florec.models.user_refit import EVAL, refit_user_emb
from florec.recdata.cohort import sample_cohort
from florec.recdata.runconfig import RunConfig
from florec.recdata.splits import Split
from florec.sim.local_grid import LocalGrid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_trim_rows import K, attacker_rows, kept_share  # noqa: E402 (bench/attack_trim_rows.py)


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
        """Write one round's line (see ``bench/attack_trim_probe.py``'s docstring)."""
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
