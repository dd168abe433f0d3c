"""Every knob of a FloRec run, validated once; shared by the ServerApp, the ClientApp and the CLI.

Keys are written with hyphens, as in ``[tool.flwr.app.config]`` and ``flwr run -c "key=value"``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from florec.recdata.errors import ConfigError


def _hyphen(name: str) -> str:
    return name.replace("_", "-")


class RunConfig(BaseModel):
    """A resolved run configuration (defaults equal ``[tool.flwr.app.config]``)."""

    model_config = ConfigDict(
        alias_generator=_hyphen, populate_by_name=True, extra="forbid", frozen=True
    )

    algorithm: Literal["fedavg", "fedcia", "local"] = "fedavg"
    model: Literal["mf", "lightgcn", "mlp", "gfcf", "itemknn", "pop", "sasrec", "gru4rec",
                   "cotrec", "llkd", "llmd4rec", "agentcf", "agentcf++"] = "mf"
    dataset: str = "ml-100k"
    data_dir: str = ""
    min_rating: float = Field(1.0, ge=0)
    split: Literal["loo", "ratio", "global", "given", "ratio-fs"] = "loo"
    split_seed: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)
    num_nodes: int = Field(100, ge=1)
    users_per_node: int = Field(0, ge=0)
    clients_per_node: int = Field(1, ge=1)
    partition: Literal["contiguous", "random", "floor"] = "contiguous"
    num_rounds: int = Field(20, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(0.05, gt=0)
    reg: float = Field(0.0, ge=0)
    dim: int = Field(64, ge=1)
    init_std: float = Field(0.1, gt=0)
    aggregation: Literal["dense", "sparse", "sum", "item-weighted"] = "dense"
    weighting: Literal["interactions", "uniform"] = "interactions"
    # FedAvg server optimisers, user optimiser state and lr schedule (issue 15)
    server_opt: Literal["none", "avgm", "adam", "yogi"] = "none"
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.9, ge=0, lt=1)
    server_beta1: float = Field(0.9, ge=0, lt=1)
    server_beta2: float = Field(0.99, ge=0, lt=1)
    server_tau: float = Field(1e-3, gt=0)
    keep_user_opt_state: bool = False
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_min: float = Field(0.0, ge=0)
    lr_step_rounds: int = Field(10, ge=1)
    lr_gamma: float = Field(0.5, gt=0, le=1)
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_fit_fraction: float = Field(0.5, ge=0, le=1)
    eval_every: int = Field(1, ge=1)
    ks: str = "10,20"
    selection_metric: str = "ndcg@10"
    patience: int = Field(0, ge=0)
    out_dir: str = ""
    node_wait_s: float = Field(300.0, gt=0)
    round_timeout_s: float = Field(3600.0, gt=0)
    synthetic_users: int = Field(200, ge=2)
    synthetic_items: int = Field(300, ge=2)
    synthetic_interactions: int = Field(20, ge=3)
    eval_chunk: int = Field(1024, ge=1)
    layers: int = Field(3, ge=1)
    hidden: int = Field(32, ge=1)
    fedcia_comm: Literal["dense", "factored"] = "dense"
    fedcia_rank: int = Field(0, ge=0)
    fedcia_weighting: Literal["uniform", "interactions"] = "uniform"
    align_steps: int = Field(100, ge=0)
    align_lr: float = Field(0.1, gt=0)
    align_norm: Literal["frobenius", "squared"] = "frobenius"
    noise_scale: float = Field(0.0, ge=0)
    model_mix: str = ""
    gfcf_s: int = Field(32, ge=0)
    gfcf_wp: float = Field(0.3, ge=0)
    gfcf_aggp: float = Field(60.0, ge=0)
    gfcf_mode: Literal["exact", "gsp"] = "exact"
    itemknn_k: int = Field(0, ge=0)
    itemknn_shrink: float = Field(0.0, ge=0)
    device: str = "auto"
    # the LLM layer (issue 12, docs/methods/llm.md)
    llm_backend: Literal["hf", "openai", "tiny", "scripted"] = "hf"
    llm_model: str = "smollm2"
    llm_base_url: str = ""
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_device: str = "auto"
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    llm_max_concurrency: int = Field(4, ge=1)
    llm_timeout_s: float = Field(120.0, gt=0)
    llm_batch_size: int = Field(16, ge=1)
    llm_cache: bool = True
    encoder: str = "minilm"
    scripted_p: float = Field(0.5, ge=0, le=1)
    # scale: user cohorts, node-local store, checkpoints (issue 4)
    cohort_fraction: float = Field(1.0, gt=0, le=1)
    cohort_size: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    resume: bool = False
    store_spill_mb: float = Field(64.0, ge=0)
    # sequential recommenders and Oracle4Rec (issue 6)
    max_seq_len: int = Field(50, ge=2)
    seq_loss: Literal["ce", "bpr", "bce"] = "ce"
    heads: int = Field(2, ge=1)
    seq_layers: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    oracle: bool = False
    oracle_alpha: float = Field(0.01, ge=0)
    oracle_gamma: float = Field(0.2, ge=0)
    oracle_ratio: float = Field(0.75, gt=0, le=1)
    oracle_future: int = Field(10, ge=1)
    filter_layers: int = Field(1, ge=0)
    backbone_filter_layers: int = Field(0, ge=0)
    # popularity debiasing: Fair Sampling and its baselines over MF (issue 6)
    mf_loss: Literal["bpr", "ubpr", "cpr", "fs-pair", "wmf", "relmf", "du", "fs-point"] = "bpr"
    ips_beta: float = Field(0.5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    # CoT-Rec on the LLM layer (issue 12, docs/methods/cotrec.md)
    cotrec_init: Literal["cotrec", "title", "random"] = "cotrec"
    cotrec_user_token: bool = True
    cotrec_history: int = Field(10, ge=1)
    cotrec_init_scale: float = Field(1.0, gt=0)
    cotrec_item_tokens: int = Field(64, ge=1)
    cotrec_user_tokens: int = Field(32, ge=1)
    cotrec_ranker: Literal["lora", "untuned", "none"] = "lora"
    cotrec_lora_epochs: int = Field(1, ge=1)
    cotrec_lora_lr: float = Field(2e-4, gt=0)
    cotrec_lora_r: int = Field(8, ge=1)
    cotrec_lora_rounds: int = Field(1, ge=1)
    cotrec_mapb_users: int = Field(50, ge=0)
    cotrec_stage_cache: bool = True
    # LLMD4Rec: LLM <-> SASRec mutual distillation (issue 13, docs/methods/llmd4rec.md)
    llmd4rec_teacher: Literal["llm", "ensemble"] = "llm"
    llmd4rec_temperature: float = Field(2.0, gt=0)
    llmd4rec_lambda_crm: float = Field(0.5, ge=0)
    llmd4rec_lambda_llm: float = Field(0.5, ge=0)
    llmd4rec_weighting: Literal["truth", "argmax", "uniform"] = "truth"
    llmd4rec_candidates: int = Field(10, ge=2, le=10)
    llmd4rec_iterations: int = Field(3, ge=0)
    llmd4rec_crm_epochs: int = Field(5, ge=1)
    llmd4rec_crm_lr: float = Field(1e-3, gt=0)
    llmd4rec_crm_batch_size: int = Field(256, ge=1)
    llmd4rec_patience: int = Field(5, ge=0)
    llmd4rec_pretrain_rounds: int = Field(10, ge=0)
    llmd4rec_positions: int = Field(0, ge=0)
    llmd4rec_history: int = Field(10, ge=1)
    llmd4rec_augment: Literal["rank", "order", "none"] = "rank"
    llmd4rec_lora_r: int = Field(8, ge=1)
    llmd4rec_lora_alpha: int = Field(16, ge=1)
    llmd4rec_lora_lr: float = Field(1e-4, gt=0)
    llmd4rec_llm_epochs: int = Field(1, ge=0)
    llmd4rec_lora_batch_size: int = Field(4, ge=1)
    llmd4rec_ensemble_size: int = Field(3, ge=1)
    llmd4rec_rerank: bool = True
    # user-level DP-FedAvg for MF (issue 16, docs/privacy.md)
    dp: bool = False
    dp_clip: float = Field(1.0, gt=0)
    dp_noise_multiplier: float = Field(0.0, ge=0)
    dp_epsilon: float = Field(0.0, ge=0)
    dp_delta: float = Field(0.0, ge=0, lt=1)
    dp_mode: Literal["central", "distributed"] = "central"
    user_refit_steps: int = Field(0, ge=0)
    user_refit_lr: float = Field(0.05, gt=0)
    # secure aggregation of FedAvg-MF updates (issue 16, docs/privacy.md)
    secagg: bool = False
    secagg_clip: float = Field(0.0, ge=0)
    # poisoning attacks and robust aggregation (issue 18, docs/attacks.md)
    attack: Literal["none", "random", "bandwagon", "pipattack", "fedrecattack", "a-ra", "a-hum",
                    "fedattack", "sign-flip"] = "none"
    attack_fraction: float = Field(0.0, ge=0, le=0.5)
    attack_targets: str = ""
    attack_fillers: int = Field(30, ge=0)
    attack_lr: float = Field(1.0, gt=0)
    attack_steps: int = Field(5, ge=1)
    attack_norm: float = Field(0.0, ge=0)
    attack_public: float = Field(0.05, gt=0, le=1)
    attack_k: int = Field(10, ge=1)
    attack_users: int = Field(128, ge=1)
    defense: Literal["none", "norm-bound", "median", "trimmed-mean", "krum",
                     "multi-krum"] = "none"
    defense_norm: float = Field(1.0, gt=0)
    defense_norm_rule: Literal["fixed", "median"] = "fixed"
    defense_trim: float = Field(0.1, ge=0, lt=0.5)
    defense_malicious: int = Field(0, ge=0)
    defense_select: int = Field(0, ge=0)
    # LLKD: LLM-to-student distillation with sample selection (issue 13, docs/methods/llkd.md)
    llkd_classes: int = Field(6, ge=2, le=10)
    llkd_selection: Literal["llkd", "all", "random", "teacher", "student"] = "llkd"
    llkd_ema: float = Field(0.9, ge=0, lt=1)
    llkd_lr: float = Field(0.01, gt=0)
    llkd_batch_size: int = Field(32, ge=1)
    llkd_budget: int = Field(0, ge=0)
    llkd_test_fraction: float = Field(0.2, gt=0, lt=1)
    llkd_teacher_items: int = Field(0, ge=0)
    # AgentCF / AgentCF++: LLM user and item agents (issue 14, docs/methods/agentcf.md)
    agentcf_users: int = Field(100, ge=1)
    agentcf_domains: int = Field(3, ge=1)
    agentcf_min_domains: int = Field(2, ge=1)
    agentcf_min_interactions: int = Field(5, ge=2)
    agentcf_max_interactions: int = Field(100, ge=2)
    agentcf_test_fraction: float = Field(0.1, gt=0, lt=1)
    agentcf_negatives: int = Field(9, ge=1, le=9)
    agentcf_train_max: int = Field(0, ge=0)
    agentcf_memory: Literal["dual", "shared"] = "dual"
    agentcf_groups: int = Field(10, ge=0)
    agentcf_kmeans_k: int = Field(32, ge=1)
    agentcf_strategy: Literal["b", "bh", "br"] = "b"
    agentcf_rank: Literal["choice", "titles"] = "choice"
    agentcf_history: int = Field(10, ge=1)
    agentcf_temperature: float = Field(0.7, ge=0)
    agentcf_max_tokens: int = Field(160, ge=8)
    agentcf_baselines: bool = False
    agentcf_synthetic_trend: float = Field(0.0, ge=0, le=1)
    # deployed rounds: a round's evaluation rides on the next train message (issue 17, §5)
    fused_evaluate: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value

    @property
    def k_list(self) -> list[int]:
        """The cut-offs of ``ks`` as integers."""
        return [int(k) for k in self.ks.split(",")]

    def synthetic_params(self) -> dict[str, int]:
        """Generator parameters for the ``synthetic`` dataset."""
        return {
            "n_users": self.synthetic_users,
            "n_items": self.synthetic_items,
            "mean_interactions": self.synthetic_interactions,
            "seed": self.split_seed,
        }

    def to_flower(self) -> dict[str, Any]:
        """The hyphenated dict, as Flower's run config holds it."""
        return self.model_dump(by_alias=True)


def parse_run_config(values: dict[str, Any]) -> RunConfig:
    """Validate a Flower run config (or CLI overrides) into a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        One line naming the bad key, the allowed values and the fix.

    """
    try:
        cfg = RunConfig.model_validate(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "config"
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(_hyphen(k) for k in RunConfig.model_fields))
            raise ConfigError(f"unknown config key '{key}'; known keys: {known}") from None
        got = first.get("input")
        raise ConfigError(f"bad value {got!r} for config key '{key}': {first['msg']}") from None
    try:
        ks = cfg.k_list
    except ValueError:
        raise ConfigError(
            f"bad value {cfg.ks!r} for 'ks': use comma-separated integers, e.g. '10,20'"
        ) from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"bad value {cfg.ks!r} for 'ks': cut-offs must be >= 1")
    name, _, k = cfg.selection_metric.partition("@")
    if (
        name not in ("precision", "recall", "hr", "f1", "ndcg", "mrr")
        or not k.isdigit()
        or int(k) not in ks
    ):
        raise ConfigError(
            f"bad value {cfg.selection_metric!r} for 'selection-metric': use METRIC@K, METRIC in "
            f"precision|recall|hr|f1|ndcg|mrr and K in ks={cfg.ks}"
        )
    if cfg.oracle and cfg.backbone_filter_layers:
        raise ConfigError(
            "'backbone-filter-layers' is for a plain SASRec/GRU4Rec; with oracle=true set "
            "Oracle4Rec's 'filter-layers' instead")
    return cfg
