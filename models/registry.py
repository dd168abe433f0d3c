"""Model names -> classes, for the CLI and the run config."""

from __future__ import annotations

import torch

from florec.models.base import Recommender
from florec.models.gfcf import GFCF
from florec.models.itemknn import ItemKNN
from florec.models.lightgcn import LightGCN
from florec.models.mf import MF
from florec.models.mlp import MLPScorer
from florec.models.pop import Pop
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


def build_model(name: str, n_users: int, n_items: int, **kwargs: object) -> Recommender:
    """Instantiate a registered model by name.

    Raises
    ------
    ConfigError
        If the name is unknown (the message lists the known names).

    """
    if name not in MODELS:
        raise ConfigError(f"model '{name}' is unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](n_users, n_items, **kwargs)


def build_sequential_model(name: str, n_items: int, *, seed: int = 0, oracle: bool = False,
                           max_len: int = 50, dim: int = 64, heads: int = 2, layers: int = 2,
                           dropout: float = 0.2, filter_layers: int = 1, ratio: float = 0.75,
                           future: int = 10, alpha: float = 0.01, gamma: float = 0.2
                           ) -> Recommender:
    """A sequential model (``sasrec``/``gru4rec``), or Oracle4Rec over it when ``oracle``.

    Weights are drawn from ``seed`` alone (the global torch RNG is left as it was), so every
    node and the central trainer start from the same model. Filter layers belong to Oracle4Rec's
    encoders; the plain backbones have none.

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
    kwargs = dict(max_len=max_len, dim=dim, heads=heads, layers=layers, dropout=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if oracle:
            return Oracle4Rec(n_items, backbone=name, filter_layers=filter_layers, ratio=ratio,
                              future=future, alpha=alpha, gamma=gamma, **kwargs)
        return (SASRec if name == "sasrec" else GRU4Rec)(n_items, **kwargs)


def sequential_from_config(cfg: RunConfig, n_items: int) -> Recommender:
    """:func:`build_sequential_model` with every knob taken from the run config."""
    return build_sequential_model(
        cfg.model, n_items, seed=cfg.seed, oracle=cfg.oracle, max_len=cfg.max_seq_len,
        dim=cfg.dim, heads=cfg.heads, layers=cfg.seq_layers, dropout=cfg.dropout,
        filter_layers=cfg.filter_layers, ratio=cfg.oracle_ratio, future=cfg.oracle_future,
        alpha=cfg.oracle_alpha, gamma=cfg.oracle_gamma)
