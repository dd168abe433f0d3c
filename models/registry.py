"""Model names -> classes, for the CLI and the run config."""

from __future__ import annotations

from models.base import Recommender
from models.gfcf import GFCF
from models.itemknn import ItemKNN
from models.lightgcn import LightGCN
from models.mf import MF
from models.mlp import MLPScorer
from models.pop import Pop
from recdata.errors import ConfigError

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

#: next-item models over time-ordered sequences (:mod:`sim.central_seq`, :mod:`client.seq_node`)
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
