"""Shared conformance suite: every registered model must pass these."""

import numpy as np
import pytest
import torch

from florec.models.gru4rec import GRU4Rec
from florec.models.oracle4rec import Oracle4Rec
from florec.models.registry import (
    MODELS,
    SEQUENTIAL_MODELS,
    build_model,
    build_sequential_model,
    model_from_config,
    model_options,
)
from florec.models.sasrec import SASRec
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config
from florec.recdata.splits import make_split
from florec.recdata.synthetic import generate_synthetic

N_USERS, N_ITEMS = 12, 20


@pytest.fixture(scope="module")
def train():
    split = make_split(generate_synthetic(n_users=N_USERS, n_items=N_ITEMS, seed=0), "loo", 0)
    return split.matrix("train")


def make(name, seed=0, train=None):
    known = model_options(MODELS[name])
    options = {k: v for k, v in {"dim": 4, "seed": seed}.items() if k in known}
    model = build_model(name, N_USERS, N_ITEMS, **options)
    if hasattr(model, "fit") and train is not None:
        model.fit(train)
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_every_item_for_each_user(name, train):
    scores = make(name, train=train).score(torch.arange(5))
    assert scores.shape == (5, N_ITEMS) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_gives_the_same_model(name, train):
    a, b = make(name, 1, train), make(name, 1, train)
    torch.testing.assert_close(a.score(torch.arange(N_USERS)), b.score(torch.arange(N_USERS)))


@pytest.mark.parametrize("name", list(MODELS))
def test_private_and_shared_state_split_the_state_dict(name, train):
    model = make(name, train=train)
    private, shared = model.private_state(), model.shared_state()
    assert set(private) | set(shared) == set(model.state_dict())
    assert all(k.startswith("user_") for k in private)
    assert not any(k.startswith("user_") for k in shared)


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_state_round_trips(name, train):
    a, b = make(name, 0, train), make(name, 5, train)
    b.load_shared_state(a.shared_state())
    for k, v in a.shared_state().items():
        np.testing.assert_array_equal(b.shared_state()[k], v)
    with pytest.raises(KeyError):
        b.load_shared_state({"user_emb": np.zeros(1)})


@pytest.mark.parametrize("name", [n for n in MODELS if build_model(n, 2, 2).trainable])
def test_trainable_models_lower_their_loss(name, train):
    model = make(name, train=train)
    coo = train.tocoo()
    users, pos = torch.as_tensor(coo.row), torch.as_tensor(coo.col)
    neg = torch.randint(0, N_ITEMS, (len(users),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = float(model.loss(users, pos, neg))
    for _ in range(30):
        opt.zero_grad()
        model.loss(users, pos, neg).backward()
        opt.step()
    assert float(model.loss(users, pos, neg)) < first


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="mf"):
        build_model("ncf", 2, 2)


@pytest.mark.parametrize("cls", [*MODELS.values(), SASRec, GRU4Rec, Oracle4Rec])
def test_every_model_constructor_rejects_an_unknown_option(cls):
    sizes = (N_ITEMS,) if cls in (SASRec, GRU4Rec, Oracle4Rec) else (N_USERS, N_ITEMS)
    with pytest.raises(TypeError, match="'bogus'"):
        cls(*sizes, bogus=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_registry_names_an_unknown_option_in_one_line(name):
    with pytest.raises(ConfigError) as err:
        build_model(name, N_USERS, N_ITEMS, bogus=1)
    assert "'bogus'" in str(err.value) and name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_run_config_passes_only_the_options_a_model_takes(name):
    cfg = parse_run_config({"model": name, "dim": 4, "seed": 3, "layers": 2, "hidden": 5,
                            "gfcf-s": 4, "gfcf-wp": 0.2, "reg": 0.01})
    model = model_from_config(cfg, name, N_USERS, N_ITEMS)
    for key, value in {"reg": 0.01, "layers": 2, "s": 4, "wp": 0.2}.items():
        if key in model_options(MODELS[name]):
            assert getattr(model, key) == value


@pytest.mark.parametrize("name", SEQUENTIAL_MODELS)
@pytest.mark.parametrize("oracle", [False, True])
def test_sequential_models_build_from_their_own_options(name, oracle):
    model = build_sequential_model(name, N_ITEMS, dim=4, heads=2, layers=1, oracle=oracle)
    assert model.score(torch.zeros(2, 50, dtype=torch.long)).shape[-1] >= N_ITEMS
