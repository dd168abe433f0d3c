"""The recommenders personas test: a trained FloRec run loaded from its folder, and controls.

A ranker gives scores over all items for a persona, given the items the persona clicked during
the simulation; the harness masks what the persona has already seen and shows the top of the
rest. :func:`load_run` rebuilds a central run (``config.json`` + ``model.npz``, which
:func:`florec.sim.central_loop.fit_and_select` writes at the best validation epoch) on its own
split. Closed loop: an MF model folds the persona's clicks into its user vector (a few BPR
steps on the user row, the item table frozen); a fitted model (Pop, ItemKNN, GF-CF) is refit
with the clicks added to the training matrix; other models only stop showing clicked items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from florec.models.base import Recommender
from florec.models.mf import MF
from florec.models.registry import MODELS, model_from_config
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import RunConfig, parse_run_config
from florec.recdata.seeds import Salt, torch_seed
from florec.recdata.splits import Split
from florec.recdata.store import get_split
from florec.sim.personas.persona import Persona

FOLD_IN_SALT = Salt.PERSONA_FOLD_IN


class Ranker(Protocol):
    """What the harness needs from a recommender."""

    name: str

    def scores(self, persona: Persona, clicks: list[int]) -> np.ndarray:
        """Scores of every item for ``persona`` after its simulated ``clicks``."""

    def update(self, clicks: dict[int, list[int]]) -> None:
        """Closed loop: learn from every anchored persona's clicks so far (``user -> items``)."""


class TrainedRecommender:
    """A trained FloRec model on its split.

    Parameters
    ----------
    name : str
        Label in reports and file names.
    model : Recommender
        The model with its trained state loaded.
    cfg : RunConfig
        The run's configuration.
    split : Split
        The run's split (anchors are its users).
    fold_in_steps : int
        Adam steps of the fold-in of an MF user vector.
    seed : int
        The harness run's seed (the fold-in's negatives, stream ``PERSONA_FOLD_IN_NEGATIVES``).

    """

    def __init__(self, name: str, model: Recommender, cfg: RunConfig, split: Split,
                 fold_in_steps: int = 50, seed: int = 0) -> None:
        self.name, self.model, self.cfg, self.split = name, model.eval(), cfg, split
        self.fold_in_steps, self.seed = fold_in_steps, seed
        self.folds = isinstance(model, MF)  # score = p_u . q_i + b_i: a user row can be refit
        self.refits = hasattr(model, "fit") and not model.trainable
        self.train = split.matrix("train")

    def scores(self, persona: Persona, clicks: list[int]) -> np.ndarray:
        """The model's scores; an MF user with clicks or without anchor is folded in first."""
        anchor = persona.anchor
        if self.folds and (clicks or anchor is None):
            history = list(persona.seed_items) + list(clicks)
            if anchor is not None:
                history += self.train.indices[self.train.indptr[anchor]:
                                              self.train.indptr[anchor + 1]].tolist()
            return self._fold_in(persona, sorted(set(history)))
        if anchor is None:
            raise ConfigError(f"{self.name}: model '{self.cfg.model}' cannot score a cold-start "
                              "persona; use an MF run (model='mf') for --cold-start")
        with torch.no_grad():
            return self.model.score(torch.tensor([anchor])).double().numpy()[0]

    def update(self, clicks: dict[int, list[int]]) -> None:
        """Refit a fitted model on train plus the anchored personas' clicks (others: no-op)."""
        if not self.refits or not clicks:
            return
        users = np.concatenate([np.full(len(v), u) for u, v in clicks.items()])
        items = np.concatenate([np.asarray(v, np.int64) for v in clicks.values()])
        extra = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)),
                              shape=self.train.shape)
        merged = (self.train + extra).tocsr()
        merged.data[:] = 1.0
        self.model.fit(merged)

    def _fold_in(self, persona: Persona, history: list[int]) -> np.ndarray:
        r"""Fit one user vector to ``history`` by BPR, items frozen.

        .. math:: \min_u \sum_{i \in H} -\log\sigma(u^\top (q_i - q_j) + b_i - b_j)
                  + \lambda \lVert u \rVert^2, \quad j \sim \mathcal{U}(\text{items})

        starting from the anchor's trained row (zeros for a cold-start persona).
        """
        q = self.model.item_emb.detach()
        b = self.model.item_bias.detach()
        start = (self.model.user_emb.detach()[persona.anchor] if persona.anchor is not None
                 else torch.zeros(q.shape[1]))
        if not history:
            return (q @ start + b).double().numpy()
        u = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=0.05)
        pos = torch.as_tensor(history)
        gen = torch.Generator().manual_seed(
            torch_seed(self.seed, Salt.PERSONA_FOLD_IN_NEGATIVES, persona.index))
        reg = max(float(self.cfg.reg), 1e-4)
        for _ in range(self.fold_in_steps):
            neg = torch.randint(q.shape[0], (len(pos),), generator=gen)
            x = (q[pos] - q[neg]) @ u + b[pos] - b[neg]
            loss = -F.logsigmoid(x).mean() + reg * u.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (q @ u.detach() + b).double().numpy()


class GenreRanker:
    """Control: items of the persona's favourite genres first, the rest after (seeded ties)."""

    def __init__(self, genres: list[list[str]], seed: int = 0, name: str = "genre-first") -> None:
        self.name, self.genres = name, [set(g) for g in genres]
        self.noise = np.random.default_rng([seed, FOLD_IN_SALT]).random(len(genres))

    def scores(self, persona: Persona, clicks: list[int]) -> np.ndarray:
        """``1[genre(i) in favourites] + u_i`` with a fixed ``u_i ~ U(0, 1)``."""
        fav = set(persona.genres)
        return np.array([float(bool(g & fav)) for g in self.genres]) + self.noise

    def update(self, clicks: dict[int, list[int]]) -> None:
        """No learning."""


class RandomRanker:
    """Control: a random order per persona and session (seeded)."""

    def __init__(self, n_items: int, seed: int = 0, name: str = "random") -> None:
        self.name, self.n_items, self.seed = name, n_items, seed

    def scores(self, persona: Persona, clicks: list[int]) -> np.ndarray:
        """Uniform random scores, seeded by the persona and how many clicks it has."""
        return np.random.default_rng([self.seed, persona.index, len(clicks)]).random(
            self.n_items)

    def update(self, clicks: dict[int, list[int]]) -> None:
        """No learning."""


def check_run(run_dir: Path | str) -> RunConfig:
    """The run config of a loadable run folder (cheap: no data, no model).

    Raises
    ------
    ConfigError
        The folder, its config or its model file is missing, or its model is not one the
        harness can load.

    """
    run_dir = Path(run_dir)
    how = "give a folder written by florec central (config.json and model.npz)"
    if not run_dir.is_dir():
        raise ConfigError(f"--model {run_dir}: no such folder; {how}")
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--model {run_dir} has no config.json, so it is not a run folder; "
                          f"{how}")
    config: dict[str, Any] = json.loads((run_dir / "config.json").read_text())["config"]
    known = RunConfig().to_flower()
    cfg = parse_run_config({k: v for k, v in config.items() if k in known})
    if cfg.model not in MODELS:
        raise ConfigError(f"--model {run_dir}: model '{cfg.model}' is not supported by florec "
                          f"simulate; use a run of {', '.join(MODELS)}")
    if not (run_dir / "model.npz").is_file():
        raise ConfigError(f"--model {run_dir} has no model.npz (federated runs and runs older "
                          f"than model saving have none); rerun: florec central --model "
                          f"{cfg.model} --dataset {cfg.dataset} --out {run_dir} --overwrite")
    return cfg


def load_run(run_dir: Path | str, name: str | None = None, seed: int = 0
             ) -> TrainedRecommender:
    """Load the trained model of a central run folder.

    Parameters
    ----------
    run_dir : Path or str
        A folder written by ``florec central`` (``config.json``, ``model.npz``).
    name : str, optional
        Label (default: the folder's name).
    seed : int
        The harness run's seed (MF fold-ins).

    Returns
    -------
    TrainedRecommender

    Raises
    ------
    ConfigError
        The folder, its config or its model file is missing, or its model is not one the
        harness can load (one line each, naming the fix).

    """
    run_dir = Path(run_dir)
    cfg = check_run(run_dir)
    split, _ = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir or None,
                         cfg.min_rating, cfg.synthetic_params())
    model = model_from_config(cfg, cfg.model, split.n_users, split.n_items)
    if hasattr(model, "fit"):
        model.fit(split.matrix("train"))
    with np.load(run_dir / "model.npz") as arrays:
        state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"--model {run_dir}: model.npz does not fit model '{cfg.model}' on "
                          f"{cfg.dataset} ({first}); retrain the run") from None
    return TrainedRecommender(name or run_dir.name, model, cfg, split, seed=seed)
