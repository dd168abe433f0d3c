"""Model names -> classes, for the CLI and the run config."""

from __future__ import annotations

import inspect
from typing import Any

from florec.models.base import Recommender
from florec.models.gfcf import GFCF
from florec.models.itemknn import ItemKNN
from florec.models.lightgcn import LightGCN
from florec.models.mf import MF
from florec.models.mlp import MLPScorer
from florec.models.pop import Pop
from florec.models.rng import cpu_seeded
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig

# Models with ``fit(train_csr)``: Pop, GF-CF and ItemKNN fit on it (no training); LightGCN only
# takes its graph from it and then trains by ``loss``. Call ``fit`` before ``score`` if it exists.
MODELS: dict[str, type[Recommender]] = {
    "mf": MF,
    "pop": Pop,
    "lightgcn": LightGCN,
    "mlp": MLPScorer,
    "gfcf": GFCF,
    "itemknn": ItemKNN,
}

#: next-item models over time-ordered sequences (:mod:`florec.sim.central_seq`,
#: :mod:`florec.client.seq_node`)
SEQUENTIAL_MODELS = ("sasrec", "gru4rec")


def model_options(model_class: type) -> tuple[str, ...]:
    """The keyword options a model's constructor takes (its leading sizes excluded)."""
    params = list(inspect.signature(model_class).parameters.values())
    return tuple(p.name for p in params
                 if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)


def check_options(name: str, model_class: type, kwargs: dict[str, Any]) -> None:
    """Fail with one line naming the first option ``model_class`` does not take.

    Raises
    ------
    ConfigError
        Naming the key and the model's options.

    """
    known = model_options(model_class)
    for key in kwargs:
        if key not in known:
            raise ConfigError(f"model '{name}' takes no option '{key}'; its options are "
                              f"{', '.join(known) or 'none'}")


def build_model(name: str, n_users: int, n_items: int, **kwargs: Any) -> Recommender:
    """Instantiate a registered model by name with its own options only.

    Raises
    ------
    ConfigError
        If the name is unknown (the message lists the known names) or an option is not one the
        model takes (the message names it; see :func:`model_from_config` to pass a run
        config's knobs).

    """
    if name not in MODELS:
        raise ConfigError(f"model '{name}' is unknown; choose one of {', '.join(MODELS)}")
    check_options(name, MODELS[name], kwargs)
    return MODELS[name](n_users, n_items, **kwargs)


def config_options(cfg: RunConfig, dim: int | None = None) -> dict[str, Any]:
    """Every non-sequential model option a run config sets (``dim`` overridable, e.g. a mix)."""
    return {"dim": cfg.dim if dim is None else dim, "seed": cfg.seed, "init_std": cfg.init_std,
            "reg": cfg.reg, "layers": cfg.layers, "hidden": cfg.hidden, "s": cfg.gfcf_s,
            "wp": cfg.gfcf_wp, "k": cfg.itemknn_k, "shrink": cfg.itemknn_shrink}


def model_from_config(cfg: RunConfig, name: str, n_users: int, n_items: int,
                      dim: int | None = None) -> Recommender:
    """:func:`build_model` with the run config's knobs that model ``name`` takes, no others."""
    if name not in MODELS:
        raise ConfigError(f"model '{name}' is unknown; choose one of {', '.join(MODELS)}")
    known = model_options(MODELS[name])
    options = {k: v for k, v in config_options(cfg, dim).items() if k in known}
    return build_model(name, n_users, n_items, **options)


def build_sequential_model(name: str, n_items: int, *, seed: int = 0, oracle: bool = False,
                           max_len: int = 50, dim: int = 64, heads: int = 2, layers: int = 2,
                           dropout: float = 0.2, filter_layers: int = 1, ratio: float = 0.75,
                           future: int = 10, alpha: float = 0.01, gamma: float = 0.2,
                           backbone_filter_layers: int = 0) -> Recommender:
    """A sequential model (``sasrec``/``gru4rec``), or Oracle4Rec over it when ``oracle``.

    Weights are drawn from ``seed`` alone (the global torch RNG is left as it was), so every
    node and the central trainer start from the same model. ``filter_layers`` are Oracle4Rec's
    (per encoder); a plain backbone gets ``backbone_filter_layers`` (0: plain SASRec/GRU4Rec;
    more: the filter ablation of issue 15 §4).

    Raises
    ------
    ConfigError
        If the name is not a sequential model, or ``dim`` is not a multiple of ``heads``.

    """
    from florec.models.gru4rec import GRU4Rec
    from florec.models.oracle4rec import Oracle4Rec
    from florec.models.sasrec import SASRec

    if name not in SEQUENTIAL_MODELS:
        raise ConfigError(f"model '{name}' is not sequential; choose one of "
                          f"{', '.join(SEQUENTIAL_MODELS)}")
    if name == "sasrec" and dim % heads:
        raise ConfigError(f"dim={dim} is not a multiple of heads={heads}; change dim or heads")
    kwargs = dict(max_len=max_len, dim=dim, layers=layers, dropout=dropout)
    with cpu_seeded(seed):
        if oracle:
            return Oracle4Rec(n_items, backbone=name, heads=heads, filter_layers=filter_layers,
                              ratio=ratio, future=future, alpha=alpha, gamma=gamma, **kwargs)
        kwargs |= dict(filter_layers=backbone_filter_layers, ratio=ratio)
        if name == "sasrec":
            return SASRec(n_items, heads=heads, **kwargs)
        return GRU4Rec(n_items, **kwargs)  # one GRU: no attention heads


def sequential_from_config(cfg: RunConfig, n_items: int) -> Recommender:
    """:func:`build_sequential_model` with every knob taken from the run config."""
    return build_sequential_model(
        cfg.model, n_items, seed=cfg.seed, oracle=cfg.oracle, max_len=cfg.max_seq_len,
        dim=cfg.dim, heads=cfg.heads, layers=cfg.seq_layers, dropout=cfg.dropout,
        filter_layers=cfg.filter_layers, ratio=cfg.oracle_ratio, future=cfg.oracle_future,
        alpha=cfg.oracle_alpha, gamma=cfg.oracle_gamma,
        backbone_filter_layers=cfg.backbone_filter_layers)
