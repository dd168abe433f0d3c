"""Algorithm names -> (strategy, initial global state) for the ServerApp."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord

from florec.models.mf import MF
from florec.models.registry import SEQUENTIAL_MODELS
from florec.protocol.codec import to_record
from florec.protocol.public_knowledge import needs_knowledge
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig
from florec.server.secagg import check_secagg
from florec.strategies.base import RecStrategy
from florec.strategies.dp import UserDP, check_dp
from florec.strategies.fedavg import FedAvgRec
from florec.strategies.fedcia import FedCIA, LocalOnly
from florec.strategies.fedcia_dp import SimilarityDP
from florec.strategies.robust import RobustFedAvgRec, RobustFedCIA, check_robust
from florec.strategies.server_opt import ServerOptimizer

#: algorithm -> models its client trainer supports (``gfcf`` only one-shot, under FedCIA)
SUPPORTED = {"fedavg": ("mf", "sasrec", "gru4rec", "cotrec", "llkd", "llmd4rec", "agentcf",
                        "agentcf++"),
             "fedcia": ("mf", "lightgcn", "mlp", "gfcf"),
             "local": ("mf", "lightgcn", "mlp", "gfcf")}


def check_algorithm(cfg: RunConfig) -> None:
    """Fail with one line if the (algorithm, model) pair has no federated implementation."""
    models = [part.split(":")[0] for part in cfg.model_mix.split(",")] if cfg.model_mix \
        else [cfg.model]
    for model in models:
        if model not in SUPPORTED[cfg.algorithm]:
            raise ConfigError(
                f"model '{model}' has no '{cfg.algorithm}' trainer; use one of "
                f"{', '.join(SUPPORTED[cfg.algorithm])}")
    if cfg.model_mix and cfg.algorithm == "fedavg":
        raise ConfigError("model-mix needs algorithm 'fedcia' or 'local' (FedAvg shares one table)")
    cohort = cfg.cohort_fraction < 1.0 or cfg.cohort_size > 0
    if cohort and cfg.algorithm != "fedavg":
        raise ConfigError(f"user cohorts (cohort-fraction/cohort-size) need algorithm 'fedavg'; "
                          f"'{cfg.algorithm}' clients are whole buckets: sample them with "
                          "fraction-train and keep cohort-fraction=1, cohort-size=0")
    if cohort and cfg.model in (*SEQUENTIAL_MODELS, "cotrec", "llmd4rec"):
        raise ConfigError(f"user cohorts are implemented for model 'mf' only; for "
                          f"'{cfg.model}' sample nodes with fraction-train and keep "
                          "cohort-fraction=1, cohort-size=0")
    fedavg_mf = cfg.algorithm == "fedavg" and cfg.model == "mf"  # any mf-loss (FairFedAvg too)
    fedavg_seq = cfg.algorithm == "fedavg" and cfg.model in SEQUENTIAL_MODELS
    if not fedavg_mf and cfg.aggregation == "sum":
        raise ConfigError("aggregation='sum' is implemented for algorithm 'fedavg' with model "
                          "'mf' only; keep aggregation dense or sparse")
    server_step = cfg.server_opt != "none" or cfg.server_lr != 1.0
    plain_seq = fedavg_seq and cfg.defense == "none" and not needs_knowledge(cfg)
    item_seq = plain_seq or (cfg.algorithm == "fedavg" and cfg.model == "llmd4rec")
    if cfg.aggregation == "item-weighted" and not item_seq:
        raise ConfigError("aggregation='item-weighted' is implemented for algorithm 'fedavg' "
                          "with model 'sasrec' or 'gru4rec' (without a defense or attack) or "
                          "'llmd4rec' only; keep aggregation='dense'")
    if server_step and not (fedavg_mf or plain_seq):
        raise ConfigError("server-opt and server-lr are implemented for algorithm 'fedavg' with "
                          "model 'mf', 'sasrec' or 'gru4rec' (for these two without a defense "
                          "or attack) only; keep server-opt='none', server-lr=1")
    if cfg.keep_user_opt_state and not (fedavg_mf and cfg.mf_loss == "bpr"):
        raise ConfigError("keep-user-opt-state is implemented for algorithm 'fedavg' with model "
                          "'mf' and mf-loss 'bpr' only (the fair trainers start each round's "
                          "user optimizer fresh); set keep-user-opt-state=false")
    check_dp(cfg)
    check_secagg(cfg)
    check_robust(cfg)
    if cfg.algorithm == "fedcia" and cfg.fedcia_comm == "factored" and cfg.noise_scale > 0:
        raise ConfigError("noise-scale > 0 has no factored equivalent; set fedcia-comm='dense' "
                          "or noise-scale=0")


def build_strategy(cfg: RunConfig, n_items: int, n_users: int = 0,
                   item_texts: Callable[[], list[str]] | None = None
                   ) -> tuple[RecStrategy, ArrayRecord]:
    """The strategy of ``cfg.algorithm`` and the global state it starts from.

    ``n_users`` and ``item_texts`` (the public item text, asked from a node only when
    called) come from the nodes: the server opens no data (:mod:`florec.server.federation`).
    """
    check_algorithm(cfg)
    if cfg.model in ("agentcf", "agentcf++"):
        raise ConfigError("AgentCF has no round strategy: the ServerApp runs its step loop "
                          "(florec.strategies.agentcf_flower.run_agentcf_federation)")
    if cfg.model == "llkd":
        from florec.strategies.llkd import build_llkd_strategy

        return build_llkd_strategy(cfg)
    if cfg.model == "llmd4rec":
        from florec.strategies.llmd4rec import build_llmd4rec_strategy

        return build_llmd4rec_strategy(cfg, n_items)
    if cfg.model == "cotrec":
        from florec.strategies.fedavg_lora import build_cotrec_strategy

        if item_texts is None:
            raise ConfigError("federated CoT-Rec needs the public item text; pass item_texts")
        return build_cotrec_strategy(cfg, n_items, n_users, item_texts())
    if cfg.model in SEQUENTIAL_MODELS:
        from florec.strategies.fedavg_params import build_sequential_strategy

        return build_sequential_strategy(cfg, n_items)
    if cfg.algorithm == "fedavg" and cfg.mf_loss != "bpr":
        from florec.strategies.fair import build_fair_strategy

        return build_fair_strategy(cfg, n_items)
    if cfg.algorithm == "fedavg":
        init = MF(0, n_items, dim=cfg.dim, seed=cfg.seed, init_std=cfg.init_std)
        server_opt = ServerOptimizer.from_config(cfg)
        if cfg.defense != "none" or needs_knowledge(cfg):  # attacks, robust aggregation (#18)
            return RobustFedAvgRec(cfg.defense, cfg.defense_norm, cfg.defense_trim,
                                   cfg.defense_malicious, cfg.defense_select,
                                   knowledge=needs_knowledge(cfg),
                                   mode=cfg.aggregation, fraction_train=cfg.fraction_train,
                                   seed=cfg.seed, server_opt=server_opt), \
                to_record(init.shared_state())
        strategy = FedAvgRec(cfg.aggregation, cfg.fraction_train, cfg.seed, server_opt)
        strategy.secagg = check_secagg(cfg)  # secure aggregation of the updates (issue 16)
        return strategy, to_record(init.shared_state())
    if cfg.algorithm == "local":
        return LocalOnly(cfg.fraction_train, cfg.seed), ArrayRecord()
    if cfg.model == "gfcf":
        from florec.strategies.gfcf import FederatedGFCF

        return FederatedGFCF(n_items, cfg.gfcf_mode, cfg.gfcf_s, cfg.gfcf_wp, cfg.seed), \
            ArrayRecord()
    rank = cfg.fedcia_rank or 2 * cfg.dim
    if cfg.defense != "none" or needs_knowledge(cfg):  # robust similarity mean, attacks (#18)
        return RobustFedCIA(cfg.defense, cfg.defense_norm, cfg.defense_trim,
                            knowledge=needs_knowledge(cfg), norm_rule=cfg.defense_norm_rule,
                            n_items=n_items, comm=cfg.fedcia_comm, rank=rank,
                            weighting=cfg.fedcia_weighting, fraction_train=cfg.fraction_train,
                            seed=cfg.seed), ArrayRecord()
    strategy = FedCIA(n_items, cfg.fedcia_comm, rank, cfg.fedcia_weighting, cfg.fraction_train,
                      cfg.seed)
    if cfg.dp:  # user-level DP on the dense similarity sum (strategies/fedcia_dp.py)
        strategy.dp = SimilarityDP.from_config(cfg, n_users)
    return strategy, ArrayRecord()


def attach_cohorts(strategy: RecStrategy, cfg: RunConfig, n_users: int,
                   node_users: list[np.ndarray]) -> None:
    """Give a FedAvg strategy its seeded user cohorts (or its Poisson user sampling under DP).

    Nodes recompute the same cohort from (seed, round, population) in
    :mod:`florec.client.fedavg_node`, so only the round number travels.
    """
    if cfg.algorithm != "fedavg" or cfg.model in (*SEQUENTIAL_MODELS, "cotrec", "llmd4rec"):
        return
    if cfg.dp:  # Poisson-sampled users (client/trainers/dp_clip.py): every node is asked
        strategy.dp = UserDP.from_config(cfg, n_users)
        return
    strategy.set_cohorts(cfg.seed, n_users, cfg.cohort_fraction, cfg.cohort_size, node_users)
