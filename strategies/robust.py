r"""Robust aggregation for FedAvg-MF: user-level and node-level defenses against poisoning.

Nodes pre-sum their users' item updates (:mod:`florec.protocol.fedavg_upload`), so a defense
that looks at single users needs their rows. FloRec settles this per defense:

- **User level** (``norm-bound``, ``median``, ``trimmed-mean``): nodes upload per-user rows
  (:mod:`florec.protocol.user_rows`; more bytes, counted) and the server applies the defense to
  each user's update, then aggregates as ``aggregation`` says.

  - ``norm-bound``: each user's update ``x_u = [dV_u, db_u]`` (all its rows) is clipped,
    ``x_u <- x_u min(1, C / ||x_u||_2)`` with ``C`` = ``defense-norm``; then plain FedAvg.
  - ``median``: row ``i`` of the change is the coordinate-wise median of the changes of the
    users that touched ``i`` (sparse aggregation over rows; Flower's FedMedian rule,
    Yin et al., ICML 2018).
  - ``trimmed-mean``: the coordinate-wise mean after cutting ``floor(beta c_i)`` values from
    each end of the ``c_i`` changes of row ``i`` (``beta`` = ``defense-trim``; Flower's
    :func:`flwr.serverapp.strategy.fedtrimmedavg.trim_mean`). A row touched by fewer than
    ``1 / beta`` users is not trimmed.
  - Under ``aggregation='sum'`` both rules replace the sum of the ``c_i`` changes of row ``i``
    by ``c_i`` times the statistic (``dV_i = c_i med_u dV_{u,i}``): the sum's scale, equal to
    it when all changes agree. ``c_i`` counts the attackers' rows too, so sybils touching row
    ``i`` inflate its step: while the statistic stays inside the benign changes' range, the step
    is bounded by ``c_i`` times the largest benign change (not by the benign users' sum).

- **Node level** (``krum``, ``multi-krum``; Blanchard et al., NeurIPS 2017): each node's
  pre-summed upload becomes its mean change ``g_k`` (dense: sum / weight; sparse: each touched
  row / its count, 0 elsewhere); Flower's
  :func:`flwr.serverapp.strategy.multikrum.select_multikrum` keeps the ``m`` nodes whose
  ``n - f - 2`` nearest neighbours are closest (``f`` = ``defense-malicious``, ``m`` = 1 for
  Krum, ``defense-select`` or ``n - f`` for Multi-Krum) and the kept replies are folded by
  plain FedAvg. Nothing extra travels.

User-level defenses keep every row of the round in server memory (rows x d floats), unlike the
streaming fold of :class:`florec.strategies.fedavg.FedAvgRec`.

**FedCIA** (:class:`RobustFedCIA`, dense communication): the coordinate-wise median or trimmed
mean over the nodes' mean similarity matrices replaces FedCIA's weighted mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.supercore import log

from florec.models.registry import SEQUENTIAL_MODELS
from florec.protocol.codec import to_record
from florec.protocol.public_knowledge import needs_knowledge
from florec.protocol.user_rows import USER_DEFENSES
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.fedcia import FedCIA, eigen_downlink, upload_norms
from florec.strategies.payload import checked_arrays, record_nbytes
from florec.strategies.public_knowledge import PublicKnowledge
from florec.strategies.robust_rules import krum_select, norm_bound, row_aggregate, stack_user_rows

__all__ = ["NODE_DEFENSES", "RobustFedAvgRec", "RobustFedCIA", "check_robust", "krum_select",
           "norm_bound", "row_aggregate"]

NODE_DEFENSES = ("krum", "multi-krum")
#: attacks that promote ``attack-targets`` (they need targets)
PROMOTION_ATTACKS = ("random", "bandwagon", "pipattack", "fedrecattack", "a-ra", "a-hum")
#: defenses of :class:`RobustFedCIA` (a robust mean of the nodes' similarity matrices)
FEDCIA_DEFENSES = ("none", "norm-bound", "median", "trimmed-mean")


def check_robust(cfg: RunConfig) -> None:
    """Fail with one line if ``attack`` / ``defense`` cannot run with this configuration."""
    if cfg.algorithm == "fedcia" and cfg.model != "gfcf":
        if cfg.attack not in ("none", "pipattack") or cfg.defense not in FEDCIA_DEFENSES:
            raise ConfigError("FedCIA takes attack 'pipattack' (a poisoned similarity upload) and "
                              f"defense one of {FEDCIA_DEFENSES}; change attack/defense")
        if cfg.defense != "none" and cfg.fedcia_comm != "dense":
            raise ConfigError("a defense over similarity matrices needs fedcia-comm='dense'")
        return
    if cfg.defense_norm_rule != "fixed":
        raise ConfigError(f"defense-norm-rule='{cfg.defense_norm_rule}' is implemented for "
                          "FedCIA; set defense-norm-rule='fixed'")
    if getattr(cfg, "secagg", False) and (cfg.defense != "none" or needs_knowledge(cfg)):
        raise ConfigError("robust aggregation needs each update and attack runs use their own "
                          "strategy, neither with secure aggregation (the server cannot take a "
                          "median of a masked sum); set secagg=false or drop defense/attack")
    if cfg.attack in PROMOTION_ATTACKS and cfg.attack_fraction > 0 and not cfg.attack_targets:
        raise ConfigError(f"attack '{cfg.attack}' promotes target items; set attack-targets, "
                          "e.g. -c \"attack-targets='unpopular:5'\"")
    if cfg.algorithm == "fedavg" and cfg.model in SEQUENTIAL_MODELS:
        from florec.client.seq_attacks import SEQ_ATTACKS

        if cfg.attack not in SEQ_ATTACKS:
            raise ConfigError(f"sequential models take attack one of {SEQ_ATTACKS}; change "
                              f"attack='{cfg.attack}'")
        return
    fedavg_mf = cfg.algorithm == "fedavg" and cfg.model == "mf" and cfg.mf_loss == "bpr"
    if (cfg.defense != "none" or cfg.attack != "none") and not fedavg_mf:
        raise ConfigError("attack and defense are implemented for FedAvg with model 'mf' and "
                          "mf-loss 'bpr', SASRec/GRU4Rec and FedCIA; keep attack='none' "
                          "defense='none'")
    if cfg.attack == "sign-flip":
        raise ConfigError("attack 'sign-flip' is for sequential models (dense uploads); for MF "
                          "use 'fedattack' as the untargeted attack")
    if cfg.defense in ("median", "trimmed-mean") and cfg.aggregation == "dense":
        raise ConfigError(f"defense '{cfg.defense}' aggregates each item row over the users "
                          "that touched it; set aggregation='sparse' or 'sum'")
    if cfg.defense in NODE_DEFENSES and cfg.aggregation == "sum":
        raise ConfigError(f"defense '{cfg.defense}' averages the nodes it keeps, which a sum "
                          "of updates cannot; set aggregation='sparse' or 'dense'")
    if cfg.defense != "none" and getattr(cfg, "dp", False):
        raise ConfigError("defense and dp are not combined yet; set defense='none' or dp=false")


class Defended:
    """Mixin of a strategy's defense knobs and the attack setup switch (put it first).

    Parameters
    ----------
    defense : str
        One of ``none``, ``norm-bound``, ``median``, ``trimmed-mean``, ``krum``, ``multi-krum``.
    norm : float
        ``defense-norm``.
    trim : float
        ``defense-trim``.
    num_malicious, num_select : int
        ``defense-malicious`` and ``defense-select`` (Krum / Multi-Krum).
    knowledge : bool
        Run the ``attack-knowledge`` setup (:class:`PublicKnowledge`) before round 1.
    **kwargs
        Passed to the strategy class further along the MRO.
    """

    def __init__(self, defense: str, norm: float = 1.0, trim: float = 0.1,
                 num_malicious: int = 0, num_select: int = 0, knowledge: bool = False,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.knowledge, self.defense, self.norm, self.trim = knowledge, defense, norm, trim
        self.num_malicious, self.num_select = num_malicious, num_select

    def summary(self) -> None:
        """Log the configuration."""
        super().summary()
        log(INFO, "\t├──> defense=%s norm=%g trim=%g f=%d m=%d", self.defense, self.norm,
            self.trim, self.num_malicious, self.num_select)


class RobustFedAvgRec(Defended, PublicKnowledge, FedAvgRec):
    """:class:`FedAvgRec` with a defense (see the module docstring) and the attack setup.

    Takes :class:`Defended`'s knobs; the other keywords go to :class:`FedAvgRec`.
    """

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply the defense, then FedAvg's update (server optimiser included).

        Under Krum / Multi-Krum, ``num-replies`` counts the usable replies (those Krum
        scored, kept or not), so that ``min-fit-fraction`` judges the nodes that answered and
        not Krum's choice; ``krum-kept`` is the number folded.
        """
        if self.defense in NODE_DEFENSES:
            kept, left_out = self._krum(server_round, replies)
            arrays, metrics = self._fold(server_round, kept)
            if metrics is not None:
                metrics["krum-kept"] = int(metrics["num-replies"])
                metrics["num-replies"] = int(metrics["num-replies"]) + left_out
            return arrays, metrics
        if self.defense not in USER_DEFENSES:
            return super().aggregate_train(server_round, replies)
        return self._user_level(server_round, replies)

    def _node_vector(self, msg: Message, up: dict[str, np.ndarray]) -> np.ndarray:
        n, d = self.current["item_emb"].shape
        if self.mode == "dense":
            w = float(msg.content.metric_records.get("metrics", {}).get("weight", 0.0))
            g = np.concatenate([up["item_emb"], up["item_bias"][:, None]], 1) / max(w, 1e-300)
        else:
            g = np.zeros((n, d + 1))
            counts = np.maximum(up["counts"], 1)[:, None]
            g[up["items"]] = np.concatenate([up["item_emb"], up["item_bias"][:, None]], 1) / counts
        return g.ravel()

    def _krum(self, server_round: int, replies: Iterable[Message]
              ) -> tuple[list[tuple[Message, dict[str, np.ndarray] | None, str | None]], int]:
        """The replies Krum keeps, then the invalid ones, as :meth:`_fold`'s triples.

        Each reply is decoded once (:meth:`_check`); the fold drops the invalid ones with their
        reason. Also returns the number of valid replies Krum left out.
        """
        expected = self._expected_shapes()
        checked = [(msg, *self._check(msg, expected)) for msg in replies]
        valid = [c for c in checked if c[2] is None]
        rest = [c for c in checked if c[2] is not None]
        if len(valid) <= 1:
            return valid + rest, 0
        keep = 1 if self.defense == "krum" else \
            (self.num_select or max(1, len(valid) - self.num_malicious))
        kept = krum_select([self._node_vector(msg, up) for msg, up, _ in valid],
                           self.num_malicious, keep)
        for i in sorted(set(range(len(valid))) - set(kept)):
            self.bytes_up += record_nbytes(valid[i][0].content)
        log(INFO, "round %d: %s kept %d of %d node updates", server_round, self.defense,
            len(kept), len(valid))
        return [valid[i] for i in kept] + rest, len(valid) - len(kept)

    def _user_level(self, server_round: int, replies: Iterable[Message]
                    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        n, d = self.current["item_emb"].shape
        expected = {"users": 0, "items": 0, "item_emb": d, "item_bias": 0, "user_weight": 0}
        parts: list[dict[str, np.ndarray]] = []
        totals: dict[str, float] = {}
        weight_sum = 0.0
        for msg in replies:
            up, problem = checked_arrays(msg, expected)
            if problem is None:
                rows = {len(up[k]) for k in ("users", "items", "item_emb", "item_bias")}
                if len(rows) != 1:
                    problem = "users, items and rows of different lengths"
                elif not (np.issubdtype(up["items"].dtype, np.integer)
                          and np.issubdtype(up["users"].dtype, np.integer)):
                    problem = "users or items not integers"
                elif (up["user_weight"] < 0).any():
                    problem = "negative user weight"
                elif len(up["items"]) and (up["items"].min() < 0 or up["items"].max() >= n
                                           or up["users"].min() < 0
                                           or up["users"].max() >= len(up["user_weight"])):
                    problem = "item or user index out of range"
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            parts.append(up)
            metrics = dict(msg.content.metric_records.get("metrics", {}))
            weight_sum += float(up["user_weight"].sum())  # the weights the numerator uses
            for key in ("num-users", "num-pairs", "loss-sum"):
                totals[key] = totals.get(key, 0.0) + float(metrics.get(key, 0.0))
        if not parts:
            return None, None
        cat = stack_user_rows(parts)
        emb, bias = cat["item_emb"].astype(np.float64), cat["item_bias"].astype(np.float64)
        if self.defense == "norm-bound":
            emb, bias = norm_bound(cat["users"], emb, bias, self.norm)
        delta = {"item_emb": np.zeros((n, d)), "item_bias": np.zeros(n)}
        if self.defense in ("median", "trimmed-mean"):
            items, e, b = row_aggregate(cat["items"], emb, bias, self.defense, self.trim)
            if self.mode == "sum":  # c_i x the robust mean: the sum's scale (module docstring)
                count = np.bincount(cat["items"], minlength=n)[items]
                e, b = e * count[:, None], b * count
            delta["item_emb"][items], delta["item_bias"][items] = e, b
        else:
            w = cat["user_weight"][cat["users"]] if self.mode == "dense" else 1.0
            np.add.at(delta["item_emb"], cat["items"], emb * np.reshape(w, (-1, 1)))
            np.add.at(delta["item_bias"], cat["items"], bias * w)
            denom = {"dense": np.full(n, max(weight_sum, 1e-300)), "sum": np.ones(n),
                     "sparse": np.maximum(np.bincount(cat["items"], minlength=n), 1)}[self.mode]
            delta = {"item_emb": delta["item_emb"] / denom[:, None],
                     "item_bias": delta["item_bias"] / denom}
        new = {k: a.astype(np.float32) for k, a in self.server_opt.step(
            {k: self.current[k] for k in delta}, delta, server_round).items()}
        out = MetricRecord({"train-loss": totals["loss-sum"] / max(totals["num-pairs"], 1.0),
                            "num-replies": len(parts), "num-users": totals["num-users"]})
        return to_record(new), out


class RobustFedCIA(PublicKnowledge, FedCIA):
    r"""FedCIA with a defense over the nodes' similarity matrices (dense communication).

    Each node uploads ``sum_k w_k S_k`` over its clients and their weight ``W``; the server
    forms each node's mean similarity ``S_node = sum_k w_k S_k / W``. Then

    - ``norm-bound`` clips each ``S_node`` to Frobenius norm ``C`` before FedCIA's weighted
      mean: :math:`\bar S = \sum W\, S_{node} \min(1, C / \lVert S_{node}\rVert_F) / \sum W`.
      ``C`` is ``defense-norm`` (rule ``fixed``) or ``defense-norm`` times the median of the
      round's ``||S_node||_F`` (rule ``median``, FLAME's adaptive bound: Nguyen et al., USENIX
      Security 2022), which follows the benign uploads as they grow and which a minority of
      nodes cannot move;
    - ``median`` / ``trimmed-mean`` (``defense-trim``) replace the mean by the coordinate-wise
      statistic over nodes, so one poisoned node cannot move an entry past the benign nodes'
      range; they keep every node's ``n x n`` matrix in memory for the round.

    With ``clients-per-node=1`` this is over clients; a node hosting several clients is one vote.
    The round's metrics carry the median and largest ``||S_node||_F`` and, under the norm bound,
    how many were clipped.

    Parameters
    ----------
    defense : {"none", "norm-bound", "median", "trimmed-mean"}
        The rule (``none``: FedCIA's weighted mean).
    norm : float
        ``defense-norm``: the bound ``C``, or its multiple of the median norm.
    norm_rule : {"fixed", "median"}
        ``defense-norm-rule``.
    trim : float
        ``defense-trim``.
    knowledge : bool
        Run the ``attack-knowledge`` setup (:class:`PublicKnowledge`) before round 1.
    **kwargs
        Passed to :class:`florec.strategies.fedcia.FedCIA`.
    """

    def __init__(self, defense: str, norm: float = 1.0, trim: float = 0.1,
                 knowledge: bool = False, norm_rule: str = "fixed", **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.knowledge, self.defense, self.norm, self.trim = knowledge, defense, norm, trim
        self.norm_rule = norm_rule

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The defended mean of the nodes' mean similarities becomes the downlink."""
        if self.defense == "none":
            return super().aggregate_train(server_round, replies)
        clip = self.defense == "norm-bound"
        # a fixed bound folds each reply as it comes; the median rule needs every norm first
        stream = clip and self.norm_rule == "fixed"
        total, weight = (np.zeros((self.n, self.n)) if clip else None), 0.0
        grams, weights, norms, loss, clients = [], [], [], 0.0, 0
        for msg in replies:
            arrays, problem = checked_arrays(msg, {"gram": (self.n, self.n)})
            metrics = {} if problem else dict(msg.content.metric_records.get("metrics", {}))
            if problem is None and not float(metrics.get("weight", 0.0)) > 0:
                problem = "reply has no positive weight"
            if problem is not None:
                self.drop(server_round, msg, problem)
                continue
            self.bytes_up += record_nbytes(msg.content)
            w = float(metrics["weight"])
            node_mean = arrays["gram"] / np.float32(w)
            norms.append(float(np.linalg.norm(node_mean)))
            weight += w
            if stream:
                total += (w * min(1.0, self.norm / max(norms[-1], 1e-300))) * node_mean
            else:  # the median rule folds once the bound is known; the robust means stack
                grams.append(node_mean)
                weights.append(w)
            loss += float(metrics.get("train-loss", 0.0))
            clients += int(metrics.get("clients", 1))
        if not norms:
            self.downlink = None
            return None, None
        bound = self.norm * float(np.median(norms)) if self.norm_rule == "median" else self.norm
        if clip:
            if not stream:  # the median rule's fold, now that the bound is known
                for node_mean, w, nrm in zip(grams, weights, norms, strict=True):
                    total += (w * min(1.0, bound / max(nrm, 1e-300))) * node_mean
            total /= weight
            s_bar = total
        else:
            stack = np.stack(grams)
            s_bar = np.median(stack, axis=0) if self.defense == "median" else \
                trim_mean(stack, self.trim)
        self.downlink = eigen_downlink(s_bar)
        out = {"num-replies": len(norms), "clients": clients,
               "train-loss": loss / len(norms)} | upload_norms(norms)
        if clip:
            out |= {"clipped-replies": sum(int(x > bound) for x in norms), "norm-bound": bound}
        return ArrayRecord(), MetricRecord(out)
